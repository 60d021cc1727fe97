-- The queue's order: a sequence number given to each build when it is inserted.
--
-- Builds were ordered by created_at, which is now() of the inserting transaction:
-- every build of one request (one transaction) got the same instant. The claim's
-- ORDER BY priority, created_at then took them in no particular order, and each of
-- them was told it stood at queue position 1. queue_seq is unique and increases in
-- the order of the inserts, so the claim and the positions shown agree, one build
-- after another. A build that goes back to the queue (a retry, a shutdown) keeps
-- its number, and so its place.

CREATE SEQUENCE builds_queue_seq;
ALTER TABLE builds ADD COLUMN queue_seq bigint;

-- Existing builds, queued ones included, keep the order they had: by created_at
-- (ties, which were in no order, broken by id so that the numbers are stable).
UPDATE builds b SET queue_seq = ordered.n
FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM builds) ordered
WHERE b.id = ordered.id;
SELECT setval('builds_queue_seq', coalesce(max(queue_seq), 0) + 1, false) FROM builds;

ALTER TABLE builds ALTER COLUMN queue_seq SET DEFAULT nextval('builds_queue_seq'),
                   ALTER COLUMN queue_seq SET NOT NULL;
ALTER SEQUENCE builds_queue_seq OWNED BY builds.queue_seq;

-- The claim: highest priority first, then first queued.
DROP INDEX builds_claim;
CREATE INDEX builds_claim ON builds (priority DESC, queue_seq) WHERE status = 'queued';

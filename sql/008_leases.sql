-- Leases and wake-ups: builders on any number of hosts sharing one PostgreSQL (issue 13).
--
-- A running build was held by a guess: at start-up a process requeued what "its host"
-- had left running, which is wrong as soon as two processes share a host or a host
-- vanishes. Now a claimed build has an owner (the existing `worker` column, named
-- host:pid/n) and a lease, lease_until, which its worker renews while the build runs.
-- A build whose lease has expired (its worker died, its host is gone, it lost the
-- database for longer than a lease) goes back to the queue, counting the attempt;
-- the watchdog that does it runs in one process at a time (an advisory lock).

ALTER TABLE builds ADD COLUMN lease_until timestamptz;

-- Builds left running by a server of the previous version hold no lease: this
-- migration runs at the start of the new server, when that process is gone (one
-- process per host was the rule), so their lease is over now.
UPDATE builds SET lease_until = now() WHERE status = 'running';

-- The watchdog's question, asked every few seconds: which leases are over.
CREATE INDEX builds_lease ON builds (lease_until) WHERE status = 'running';

-- Workers in every process LISTEN on this channel: a build queued by any process (a
-- web node's request, a worker's split or dependency) wakes them at once instead of
-- at their next poll. The payload is the build id. NOTIFY is sent at commit, so a
-- woken worker finds the row. A retry's not_before coming due changes no row and
-- sends nothing: the workers' polling finds it, as it covers a listener that was
-- disconnected for a while.
CREATE FUNCTION builds_notify_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('enot_builder_queue', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER builds_queued_inserted AFTER INSERT ON builds
    FOR EACH ROW WHEN (NEW.status = 'queued')
    EXECUTE FUNCTION builds_notify_queued();

-- Requeued (a retry, a shutdown, an expired lease), or a pending retry lifted by a
-- person's request (not_before cleared).
CREATE TRIGGER builds_queued_updated AFTER UPDATE OF status, not_before ON builds
    FOR EACH ROW WHEN (NEW.status = 'queued'
                       AND (OLD.status <> 'queued'
                            OR NEW.not_before IS DISTINCT FROM OLD.not_before))
    EXECUTE FUNCTION builds_notify_queued();

-- A running build's log, shipped by its worker as it grows (a chunk every fraction of a
-- second), so that any web node can follow any build live, wherever it runs: the
-- worker's disk is its own. `start` is the chunk's byte offset in the log; a build
-- taken over by another worker continues after what was shipped. Once the build has
-- ended and its whole log is in the store, its chunks are dropped (a sweep, a little
-- later, so that a follower reading them finishes first). Bounded by the log limit.
CREATE TABLE build_log_chunks (
    build_id  uuid NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    start     bigint NOT NULL,
    data      bytea NOT NULL,
    shipped_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (build_id, start)
);

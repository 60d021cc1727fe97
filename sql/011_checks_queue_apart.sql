-- A reproducibility check (builds.verify_of) and a plain rebuild of the same tag and
-- release may be queued together: a check that joined the rebuild would check
-- nothing. Identical requests still coalesce: plain builds into one, checks of one
-- build into one (store/queue.py, enqueue_build).

DROP INDEX builds_queued_once;
CREATE UNIQUE INDEX builds_queued_once
    ON builds (repository_id, ref, coalesce(erl_version, ''),
               coalesce(verify_of, '00000000-0000-0000-0000-000000000000'))
    WHERE status = 'queued';

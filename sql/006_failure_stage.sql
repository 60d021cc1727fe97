-- The step of a build that failed (domain.Stage): what the metrics count and the build
-- page shows, without reading it out of the message's words.
--
-- NULL for every build that has not failed, and for failures recorded before this
-- column existed (their stage is not known). Only the recording of a failure
-- (store.finish_build) writes it, and only a failed build may carry one.

ALTER TABLE builds ADD COLUMN failure_stage text
    CONSTRAINT builds_failure_stage CHECK (
        failure_stage IS NULL
        OR (failure_stage IN ('clone', 'source', 'release', 'dependencies', 'compile',
                              'artifact', 'internal')
            AND status = 'failed'));

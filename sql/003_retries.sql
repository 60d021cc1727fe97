-- Retries of builds that failed for an infrastructure reason (a clone that timed out,
-- a host that did not answer): they go back to the queue, not to be claimed before
-- not_before, which grows with each attempt.
--
-- A build that goes back to the queue while an identical one is queued already is
-- cancelled in favour of it; superseded_by says which, so that whoever waits for the
-- first build can follow it to the second.

ALTER TABLE builds ADD COLUMN not_before timestamptz;
ALTER TABLE builds ADD COLUMN superseded_by uuid REFERENCES builds (id) ON DELETE SET NULL;

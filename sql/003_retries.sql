-- Retries of builds that failed for an infrastructure reason (a clone that timed out,
-- a host that did not answer): they go back to the queue, not to be claimed before
-- not_before, which grows with each attempt.

ALTER TABLE builds ADD COLUMN not_before timestamptz;

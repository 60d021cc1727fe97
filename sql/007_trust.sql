-- Artifacts people can trust (issue 12): signed provenance and an SBOM per successful
-- build, reproducibility checks, and retired versions.

-- Where the storage keeps a build's signed provenance (a DSSE envelope) and its
-- CycloneDX SBOM, and which key signed it: keys, not paths, like artifact_path.
-- NULL for builds made before this migration (they have none) and for failures.
ALTER TABLE builds ADD COLUMN provenance_key text,
                   ADD COLUMN sbom_key text,
                   ADD COLUMN signing_key_id text;

-- A reproducibility check (POST /rebuild {"verify": true}) is a build of its own: it
-- points at the build it makes again, and never becomes the version's current
-- build (that stays the one people downloaded). When it succeeds, both builds record
-- whether their sha256 matched. NULL: not checked (or the check failed to build).
ALTER TABLE builds ADD COLUMN verify_of uuid REFERENCES builds (id) ON DELETE SET NULL,
                   ADD COLUMN reproducible boolean;
CREATE INDEX builds_verify_of ON builds (verify_of) WHERE verify_of IS NOT NULL;

-- A retired version (like a package registry's retirement): it stays downloadable by
-- its exact ref, listings mark it with the reason, and /versions leaves it out of the
-- default choice. Per tag, whatever Erlang release: the reason is about the code. A
-- row here is the retirement; undoing it deletes the row.
CREATE TABLE retirements (
    repository_id  bigint NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    ref            text NOT NULL,
    reason         text NOT NULL,
    retired_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_id, ref)
);

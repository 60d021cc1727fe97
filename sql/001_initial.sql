-- The first schema: repositories, their versions per Erlang release, and builds.
-- A build row is also the queue entry: workers claim queued rows with
-- FOR UPDATE SKIP LOCKED, so the asyncio queue only ever wakes them up.

CREATE TABLE repositories (
    id          bigserial PRIMARY KEY,
    namespace   text NOT NULL,
    name        text NOT NULL,
    clone_url   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (namespace, name)
);

-- Search is by name (exact), then by namespace.
CREATE INDEX repositories_name ON repositories (name);

CREATE TYPE build_status AS ENUM ('queued', 'running', 'succeeded', 'failed', 'cancelled');

-- One row per (repository, tag, Erlang release) that was ever built. The two build
-- pointers are kept up to date when a build finishes, so that listings and
-- downloads read one row per version instead of scanning every build ever made.
CREATE TABLE package_versions (
    id                bigserial PRIMARY KEY,
    repository_id     bigint NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    ref               text NOT NULL,
    erl_version       text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_build_id     uuid,
    success_build_id  uuid,
    success_at        timestamptz,
    UNIQUE (repository_id, ref, erl_version)
);

CREATE INDEX package_versions_success_at ON package_versions (success_at DESC)
    WHERE success_build_id IS NOT NULL;

CREATE TABLE builds (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    repository_id      bigint NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    ref                text NOT NULL,
    -- NULL until the worker has read the package's enot_config.json: a request
    -- may leave the Erlang release to the package.
    erl_version        text,
    package_version_id bigint REFERENCES package_versions (id) ON DELETE CASCADE,
    -- A build that split off from a build whose release was left to the package.
    parent_id          uuid REFERENCES builds (id) ON DELETE SET NULL,
    status             build_status NOT NULL DEFAULT 'queued',
    priority           integer NOT NULL DEFAULT 0,
    attempt            integer NOT NULL DEFAULT 0,
    requested_by       text NOT NULL DEFAULT 'api',
    notify_email       boolean NOT NULL DEFAULT false,
    author_email       text,
    commit_sha         text,
    artifact_path      text,
    artifact_name      text,
    artifact_sha256    text,
    artifact_size      bigint,
    log_path           text,
    message            text NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    finished_at        timestamptz,
    worker             text
);

-- Identical queued builds coalesce into one (same repository, ref and release).
CREATE UNIQUE INDEX builds_queued_once
    ON builds (repository_id, ref, coalesce(erl_version, ''))
    WHERE status = 'queued';

-- The claim: highest priority first, then oldest.
CREATE INDEX builds_claim ON builds (priority DESC, created_at) WHERE status = 'queued';
CREATE INDEX builds_running ON builds (status) WHERE status = 'running';
CREATE INDEX builds_parent ON builds (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX builds_repository ON builds (repository_id, ref, erl_version);

-- Dependency-first builds (issue 11): a package's dependencies are resolved by the
-- server before it compiles, each is built first, and the package waits meanwhile.

-- A build whose dependencies are not all built yet: it holds no worker, and goes back
-- to the queue (keeping its queue_seq, so its place) when the last one succeeds, or
-- fails when one of them fails. Not usable in this transaction (PostgreSQL's rule for
-- new enum values), and nothing below uses it.
ALTER TYPE build_status ADD VALUE IF NOT EXISTS 'waiting' AFTER 'queued';

-- Where a dependency build stands in the tree of the build that first needed it: the
-- tree is bounded in depth and in size (resolve/graph.py), and these make both
-- checks one lookup. A build somebody asked for is its own root, at depth 0 (NULL root).
ALTER TABLE builds ADD COLUMN dependency_root uuid REFERENCES builds (id) ON DELETE SET NULL,
                   ADD COLUMN dependency_depth integer NOT NULL DEFAULT 0;
CREATE INDEX builds_dependency_root ON builds (dependency_root) WHERE dependency_root IS NOT NULL;

-- build_id needs dependency_id: the edges of the dependency graph, recorded when the
-- build resolved its dependencies. `name` is the name the package gives it (rebar's
-- key, an erlang.mk DEPS word, enot's "name"), so that a build that ran again after
-- waiting uses the resolution it recorded (a branch moved meanwhile changes nothing).
CREATE TABLE build_dependencies (
    build_id       uuid NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    dependency_id  uuid NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    name           text NOT NULL,
    PRIMARY KEY (build_id, dependency_id)
);
-- Who waits for a build that just ended.
CREATE INDEX build_dependencies_dependency ON build_dependencies (dependency_id);

-- The package registry's answers (dependencies.hex_api), so that the registry is asked
-- once per package and hour, and a registry that is down does not fail builds it
-- answered before. `answer` keeps only what we use: release versions and meta.links.
CREATE TABLE registry_packages (
    registry    text NOT NULL,
    name        text NOT NULL,
    answer      jsonb NOT NULL,
    fetched_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (registry, name)
);

-- Who may bind a package name, and to what (issue 14: package-name squatting and
-- webhook rebinding).
--
-- A package name (namespace/name) is bound to one repository: a host and the path
-- /namespace/name on it. Before, only the last two path segments of a clone URL were
-- compared and the host was ignored, so https://github.com/attacker/ns/name could
-- take ns/name. The host is now part of the binding: a name never moves to another
-- host except from a provisional binding (below).

ALTER TABLE repositories ADD COLUMN host text NOT NULL DEFAULT '';

-- Backfill from the clone URL: scheme://[user@]host[:port]/...; '' stays for file://
-- URLs (an operator's local repositories, on this machine).
UPDATE repositories
SET host = lower(substring(clone_url FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/]*@)?([^/:]+)'))
WHERE clone_url !~* '^file:' AND clone_url ~ '^[A-Za-z][A-Za-z0-9+.-]*://[^/]';

-- Who made the binding. 'request' (a person's HTTP or form request, a rebuild) and
-- 'webhook' (a verified delivery from the repository itself) are the owner's word.
-- 'dependency' is provisional: a dependency scan bound the name to whatever URL some
-- other package's pins named, which no owner asserted, so the owner's later request
-- or webhook replaces it, and a dependency scan never replaces any binding.
ALTER TABLE repositories ADD COLUMN bound_by text NOT NULL DEFAULT 'request'
    CHECK (bound_by IN ('request', 'webhook', 'dependency'));

-- Existing rows: the first build of a repository says who bound it. A row whose
-- hosted clone URL is not exactly /namespace/name[.git] on its host is what the old
-- check let through (a squatted name): it becomes provisional, so that the real owner
-- can take the name back.
UPDATE repositories r
SET bound_by = CASE
    WHEN r.clone_url !~* '^file:'
         AND regexp_replace(regexp_replace(lower(r.clone_url),
                                           '^[a-z][a-z0-9+.-]*://[^/]*', ''),
                            '(\.git)?/?$', '')
             <> '/' || lower(r.namespace || '/' || r.name) THEN 'dependency'
    ELSE coalesce((SELECT CASE WHEN b.requested_by LIKE 'dependency of %' THEN 'dependency'
                               WHEN b.requested_by = 'webhook' THEN 'webhook' END
                   FROM builds b WHERE b.repository_id = r.id
                   ORDER BY b.created_at LIMIT 1), 'request') END;

-- The id GitHub gives the repository (repository.id of a webhook delivery), recorded
-- by the first webhook: a later delivery for the same name from another repository
-- (deleted and created again, an owner renamed and the name taken) is refused.
ALTER TABLE repositories ADD COLUMN github_id bigint;

-- The delivery id is not covered by the signature: the same signed body sent again
-- with a new X-GitHub-Delivery, or with none, must not queue again. A delivery is now
-- also remembered by the sha256 of its raw body, and the id may be absent.
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_pkey;
ALTER TABLE webhook_deliveries ALTER COLUMN delivery_id DROP NOT NULL;
CREATE UNIQUE INDEX webhook_deliveries_id ON webhook_deliveries (delivery_id);
ALTER TABLE webhook_deliveries ADD COLUMN body_sha256 text;
CREATE UNIQUE INDEX webhook_deliveries_body ON webhook_deliveries (body_sha256);

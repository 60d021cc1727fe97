-- Requests, webhook deliveries and dependency links.
--
-- A request (an HTTP build request, a webhook delivery, a rebuild, a dependency
-- scan) groups the builds it asked for, so that one report mail goes out when all of
-- them have ended. A build coalesced into an identical queued one belongs to every
-- request that asked for it.

CREATE TABLE build_requests (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    requested_by  text NOT NULL,
    notify_email  boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Set once, when the report went to the mailer: the guard against mailing twice.
    reported_at   timestamptz
);

CREATE TABLE request_builds (
    request_id  uuid NOT NULL REFERENCES build_requests (id) ON DELETE CASCADE,
    build_id    uuid NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    PRIMARY KEY (request_id, build_id)
);

CREATE INDEX request_builds_build ON request_builds (build_id);
CREATE INDEX build_requests_unreported ON build_requests (created_at)
    WHERE reported_at IS NULL AND notify_email;

-- GitHub redelivers a webhook with the same X-GitHub-Delivery id: remembering the id
-- makes a redelivery queue nothing twice.
CREATE TABLE webhook_deliveries (
    delivery_id  text PRIMARY KEY,
    event        text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

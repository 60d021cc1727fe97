"""The paths of the links the server hands out, where no router is at hand.

routes.py registers the routes on these; handlers and templates build links with the
router (api/links.py, the templates' `url()`); the SQL that builds the protocol's
documents in the database (store.py) and the report mail (mail.py) use these.
"""

from __future__ import annotations

DOWNLOAD = "/download/{build_id}"
BUILD_LOG = "/build_log"

# Prefixes the database puts a build id after (SQL text: no quote in them).
DOWNLOAD_PREFIX = DOWNLOAD.removesuffix("{build_id}")
BUILD_LOG_PREFIX = f"{BUILD_LOG}?build_id="


def download(build_id: str) -> str:
    return DOWNLOAD.format(build_id=build_id)


def build_log(build_id: str) -> str:
    return f"{BUILD_LOG_PREFIX}{build_id}"

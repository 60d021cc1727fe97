"""Every SQL statement of the server: named functions over an aiopg cursor.

Parameters are always bound, never formatted into the text. Listings read the
per-version build pointers in package_versions, so their cost follows the size of
the answer, not the number of builds ever made. One module a subject; callers use
`store.<function>` whichever module holds it.
"""

from __future__ import annotations

from . import leases, logs  # noqa: F401  (store.leases.<f>, store.logs.<f>: issue 13)
from .builds import (  # noqa: F401
    artifact,
    build_log_info,
    build_statuses,
    get_build,
    last_builds,
    newest_artifact,
    search,
    successful_builds,
    successful_versions,
)
from .common import TERMINAL, Row
from .dependencies import (  # noqa: F401
    built_or_pending,
    family_pending,
)
from .graph import (  # noqa: F401
    add_dependency,
    dependency_builds,
    dependency_path,
    dependency_position,
    fail_dependents,
    recorded_dependencies,
    release_dependents,
    set_dependency_position,
    start_waiting,
    sweep_waiting,
)
from .pages import (  # noqa: F401
    active_builds,
    package_versions_matrix,
    queue_counts,
    queue_position,
    queue_rows,
    recent_builds,
    search_packages,
    sibling_builds,
    successful_refs,
)
from .queue import (  # noqa: F401
    claim_build,
    enqueue_build,
    finish_build,
    lock_build_key,
    requeue_build,
    set_build_erl_version,
    set_build_log,
    set_build_source,
    stuck_builds,
)
from .registry import (  # noqa: F401
    registry_answer,
    save_registry_answer,
)
from .repositories import (  # noqa: F401
    bind_repository,
    find_repository,
    rebind_repository,
)
from .requests import (  # noqa: F401
    create_request,
    link_build,
    link_split_build,
    record_delivery,
    request_report,
    take_complete_requests,
)
from .trust import (  # noqa: F401
    attestation,
    attestation_by_sha256,
    retire,
    retirements,
    unretire,
)

__all__ = ["TERMINAL", "Row"]

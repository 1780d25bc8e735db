"""Local stand-ins for Google Cloud: PostgreSQL (Cloud SQL), BigQuery, Cloud Storage, Pub/Sub.

`up()` starts them as detached processes under the state folder (they outlive the
caller), `down()` stops what it started, `status()` reports, and `service_env()` gives
the environment variables (docs/dev/conventions.md) that point code at them.
"""

from skyfed.localenv.manager import (
    SERVICES,
    FederationStatus,
    ServiceStatus,
    apply_service_env,
    down,
    service_env,
    status,
    up,
)

__all__ = [
    "SERVICES",
    "FederationStatus",
    "ServiceStatus",
    "apply_service_env",
    "down",
    "service_env",
    "status",
    "up",
]

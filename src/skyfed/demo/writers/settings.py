"""Connection settings of the three demo sources: from the loaded spec when given, else the env vars.

The env vars are those of docs/dev/conventions.md, exported by `skyfed up` /
`skyfed.localenv.service_env()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from skyfed.errors import SkyfedError

NOT_RUNNING_HINT = "the local federation is not running — run `skyfed up` (or `make demo`)"


@dataclass(frozen=True)
class PgSettings:
    host: str
    port: int
    user: str
    password: str | None
    database: str = "latam_ops"
    schema: str = "public"

    def conninfo(self, database: str | None = None) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password,
                "dbname": database or self.database, "connect_timeout": 5}


@dataclass(frozen=True)
class BqSettings:
    project: str = "skyfed-eu"
    dataset: str = "eu_ops"
    location: str = "europe-west1"
    endpoint: str | None = None


@dataclass(frozen=True)
class GcsSettings:
    bucket: str = "skyfed-na-raw"
    project: str = "skyfed-na"
    endpoint: str | None = None


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value or None


def pg_settings(spec: Any = None) -> PgSettings:
    if spec is not None:
        src = spec.source("latam.ops")
        pw = src.password.reveal() if src.password is not None else None
        return PgSettings(src.host, int(src.port), src.user, pw, src.database, src.schema_)
    if not _env("SKYFED_PG_PORT"):
        raise SkyfedError("PostgreSQL for region latam is not configured (SKYFED_PG_PORT is not set)", NOT_RUNNING_HINT)
    return PgSettings(_env("SKYFED_PG_HOST") or "127.0.0.1", int(os.environ["SKYFED_PG_PORT"]),
                      _env("SKYFED_PG_USER") or "skyfed", _env("SKYFED_PG_PASSWORD"))


def bq_settings(spec: Any = None) -> BqSettings:
    if spec is not None:
        src = spec.source("eu.ops")
        return BqSettings(src.project, src.dataset, src.location, src.endpoint or None)
    endpoint = _env("SKYFED_BQ_ENDPOINT")
    if not endpoint:
        raise SkyfedError("the BigQuery endpoint for region eu is not configured (SKYFED_BQ_ENDPOINT is not set)",
                          NOT_RUNNING_HINT)
    return BqSettings(endpoint=endpoint)


def gcs_settings(spec: Any = None) -> GcsSettings:
    if spec is not None:
        src = spec.source("na.exports")
        return GcsSettings(src.bucket, spec.regions["na"].project, src.endpoint or None)
    endpoint = _env("STORAGE_EMULATOR_HOST")
    if not endpoint:
        raise SkyfedError("the Cloud Storage endpoint for region na is not configured (STORAGE_EMULATOR_HOST is not set)",
                          NOT_RUNNING_HINT)
    return GcsSettings(endpoint=endpoint)

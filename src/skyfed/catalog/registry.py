"""Versions of contracts and policies, stored in the metadata database.

One row per (kind, name, version): the canonical JSON body, its sha256, when and
from which spec file it was first seen. Registering the same hash again returns
the existing version, so re-running a check is idempotent. The rules for what may
become a new version live in skyfed.governance; this module only stores rows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from skyfed.catalog.metadata import engine_for
from skyfed.errors import SkyfedError

_meta = sa.MetaData()
versions = sa.Table(
    "skyfed_registry_versions",
    _meta,
    sa.Column("kind", sa.String(20), primary_key=True),  # contract | policy
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("declared_version", sa.Integer),  # the `version:` the spec declared
    sa.Column("spec_path", sa.Text),
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("compatibility", sa.String(30)),
    sa.UniqueConstraint("kind", "name", "hash", name="uq_registry_hash"),
)


def engine() -> sa.Engine:
    return engine_for(_meta)


def _row(r: Any) -> dict[str, Any]:
    d = dict(r._mapping)
    d["body"] = json.loads(d["body"])
    return d


def history(name: str, kind: str = "contract") -> list[dict[str, Any]]:
    """Every version of `name`, oldest first."""
    q = sa.select(versions).where((versions.c.kind == kind) & (versions.c.name == name)).order_by(versions.c.version)
    with engine().connect() as con:
        return [_row(r) for r in con.execute(q)]


def names(kind: str = "contract") -> list[str]:
    q = sa.select(versions.c.name).where(versions.c.kind == kind).distinct().order_by(versions.c.name)
    with engine().connect() as con:
        return [r[0] for r in con.execute(q)]


def find_hash(name: str, digest: str, kind: str = "contract") -> dict[str, Any] | None:
    q = sa.select(versions).where((versions.c.kind == kind) & (versions.c.name == name) & (versions.c.hash == digest))
    with engine().connect() as con:
        r = con.execute(q).first()
    return _row(r) if r else None


def register(
    name: str,
    digest: str,
    body: dict[str, Any],
    *,
    kind: str = "contract",
    declared_version: int | None = None,
    spec_path: str | None = None,
    compatibility: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Store `body` as the next version of `name` unless its hash is known; returns (row, created).

    Two writers racing for the same version number collide on the primary key: the
    loser re-reads and retries, so versions stay dense and a hash is stored once.
    """
    for _ in range(5):
        known = find_hash(name, digest, kind)
        if known:
            return known, False
        with engine().connect() as con:
            last = con.execute(
                sa.select(sa.func.max(versions.c.version)).where((versions.c.kind == kind) & (versions.c.name == name))
            ).scalar()
        row = {
            "kind": kind,
            "name": name,
            "version": (last or 0) + 1,
            "hash": digest,
            "body": json.dumps(body),  # column order is part of the shape: do not sort
            "declared_version": declared_version,
            "spec_path": spec_path,
            "registered_at": datetime.now(UTC),
            "compatibility": compatibility,
        }
        try:
            with engine().begin() as con:
                con.execute(versions.insert().values(**row))
        except IntegrityError:
            continue
        row["body"] = body
        return row, True
    raise SkyfedError(
        f"could not register a version of {kind} {name}: other writers kept taking the next version number",
        "run the command again",
    )

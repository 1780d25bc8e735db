"""Where the metadata database lives: one SQLAlchemy URL for every component.

Locally it is a SQLite file `<state_dir>/catalog.db`; on Google Cloud it is
PostgreSQL on Cloud SQL in the hub project, given as a SQLAlchemy URL in
SKYFED_METADATA_URL (e.g. `postgresql+psycopg://user:pw@host:5432/skyfed`).
pyiceberg's SqlCatalog keeps the Iceberg catalog tables there (`iceberg_tables`,
`iceberg_namespace_properties`); run tables are added next to them later.
The database holds metadata only, never rows.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from skyfed.errors import SkyfedError
from skyfed.home import state_dir

ENV_VAR = "SKYFED_METADATA_URL"
SQLITE_FILE = "catalog.db"


def metadata_url(url: str | None = None) -> str:
    """The metadata database's SQLAlchemy URL: `url`, else $SKYFED_METADATA_URL, else the local SQLite file."""
    chosen = url or os.environ.get(ENV_VAR) or f"sqlite:///{state_dir() / SQLITE_FILE}"
    if "://" not in chosen:
        raise SkyfedError(
            f"the metadata database URL {redact(chosen)!r} is not a SQLAlchemy URL",
            f"set {ENV_VAR} to e.g. postgresql+psycopg://user:password@host:5432/skyfed, or unset it for SQLite",
        )
    return chosen


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def prepare(url: str) -> str:
    """Make the database ready for concurrent use and return the URL.

    For SQLite this switches the file to WAL journaling (persistent, once per file) so
    that readers (queries, `status`) never block a writer's commit and vice versa.
    """
    if is_sqlite(url):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            con = sqlite3.connect(path, timeout=30)
            try:
                con.execute("PRAGMA journal_mode=WAL")
            finally:
                con.close()
    return url


_ENGINES: dict[str, sa.Engine] = {}
_CREATED: set[tuple[str, int]] = set()
_LOCK = threading.Lock()  # model builds run in threads


def engine_for(meta: sa.MetaData, url: str | None = None) -> sa.Engine:
    """The process's engine for the metadata database, with `meta`'s tables created.

    One engine per URL is shared by every component. Two processes creating the same
    tables at once can both pass SQLAlchemy's existence check; the loser's CREATE then
    fails, so the check is repeated a few times before giving up.
    """
    chosen = metadata_url(url)
    with _LOCK:
        eng = _ENGINES.get(chosen)
        if eng is None:
            args = {"timeout": 30} if is_sqlite(chosen) else {}  # wait for a concurrent writer instead of failing
            eng = _ENGINES[chosen] = sa.create_engine(prepare(chosen), connect_args=args)
        if (chosen, id(meta)) not in _CREATED:
            for attempt in range(5):
                try:
                    meta.create_all(eng)
                    break
                except DBAPIError:
                    if attempt == 4:
                        raise
            _CREATED.add((chosen, id(meta)))
    return eng


def redact(url: str) -> str:
    """The URL with its password replaced by ***, for messages and status output."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    return url

"""Result cache: a federated answer kept as an Arrow IPC file under state_dir()/cache/.

Key = sha256 of
- the normalized SQL (sqlglot: parsed as DuckDB and printed back, so whitespace, comments
  and the case of keywords and unquoted identifiers do not matter; literals do),
- the version of every table the plan reads, per region: the Iceberg snapshot id, the
  BigQuery store's last commit id (`_skyfed_commits`), and size + mtime of each reference
  Parquet file read at the coordinator,
- the coordinator settings that change the answer (`allow_partial`; the role once
  governance lands).

A new commit to any table read changes its version, hence the key: the old entry is
never found again and ages out. Entries also expire after a TTL (`ttl` seconds from when
the answer was computed). Partial answers are never stored. Queries over live source
tables are not cached (a source has no snapshot id to key on).

Layout: `<key>.arrow` (IPC file) per entry and one `index.json` (key -> created, rows,
bytes, sql, versions), rewritten atomically under an fcntl lock, so several processes
(CLI runs) share the cache. Total size is capped (oldest entries go first).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlglot

from skyfed.home import state_dir

DEFAULT_TTL = float(os.environ.get("SKYFED_QUERY_CACHE_TTL", "300"))
MAX_BYTES = 512 * 1024 * 1024


@functools.lru_cache(maxsize=1024)  # a pure function of the text; a dashboard repeats the same few statements
def normalize_sql(sql: str) -> str:
    """The statement as sqlglot prints it back from DuckDB SQL: one spelling per meaning of the text."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.SqlglotError:
        return " ".join(sql.split())
    return tree.sql("duckdb", normalize=True, comments=False)


def cache_key(normalized_sql: str, versions: dict[str, Any], settings: dict[str, Any]) -> str:
    payload = json.dumps({"sql": normalized_sql, "versions": versions, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class CacheHit:
    table: pa.Table
    created: float
    age_seconds: float
    entry: dict[str, Any]


class ResultCache:
    """Arrow IPC files plus a JSON index under one folder (see the module docstring)."""

    def __init__(self, root: Path | str | None = None, *, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.time, max_bytes: int = MAX_BYTES):  # fmt: skip
        self.root = Path(root) if root is not None else state_dir() / "cache" / "query"
        self.ttl = float(ttl)
        self.clock = clock
        self.max_bytes = max_bytes

    # ------------------------------------------------------------------ index

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "index.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                index = self._read_index()
                before = json.dumps(index, sort_keys=True)
                yield index
                if json.dumps(index, sort_keys=True) != before:
                    tmp = self.root / f"index.json.{os.getpid()}.tmp"
                    tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
                    os.replace(tmp, self.root / "index.json")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_index(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / "index.json").read_text())
            return data if isinstance(data, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.arrow"

    # ------------------------------------------------------------------ API

    def get(self, key: str) -> CacheHit | None:
        """The entry for `key` if it exists and is younger than the TTL."""
        now = self.clock()
        with self._locked() as index:
            entry = index.get(key)
            if entry is None:
                return None
            if now - entry["created"] > self.ttl:
                return None  # expired for this TTL (another process may use a longer one; _evict removes it later)
            if not self._path(key).exists():
                index.pop(key, None)
                return None
        try:
            with pa.memory_map(str(self._path(key)), "r") as source:
                table = pa.ipc.open_file(source).read_all()
        except (OSError, pa.ArrowInvalid):
            return None
        return CacheHit(table, entry["created"], max(0.0, now - entry["created"]), entry)

    def put(self, key: str, table: pa.Table, meta: dict[str, Any]) -> None:
        now = self.clock()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{key}.{os.getpid()}.tmp"
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, self._path(key))
        size = self._path(key).stat().st_size
        with self._locked() as index:
            index[key] = {"created": now, "rows": table.num_rows, "bytes": size, **meta}
            self._evict(index, now)

    def _evict(self, index: dict[str, Any], now: float) -> None:
        for k in [k for k, e in index.items() if now - e["created"] > max(self.ttl, 0.0) * 4 + 3600]:
            index.pop(k)
            self._path(k).unlink(missing_ok=True)
        total = sum(e.get("bytes", 0) for e in index.values())
        for k in sorted(index, key=lambda k: index[k]["created"]):
            if total <= self.max_bytes:
                break
            total -= index[k].get("bytes", 0)
            index.pop(k)
            self._path(k).unlink(missing_ok=True)

    def clear(self) -> int:
        with self._locked() as index:
            n = len(index)
            for k in list(index):
                self._path(k).unlink(missing_ok=True)
            index.clear()
        return n

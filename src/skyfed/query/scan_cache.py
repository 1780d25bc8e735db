"""Region scan cache: the hot columns of an Iceberg table's current snapshot held natively in DuckDB.

Why: a DuckDB region spends most of a query decoding Parquet (measured: the fuel metric's latam
part 0.18 s over the files vs 0.08 s over a compressed native copy of the same columns). Like
Databricks' disk cache or Starburst's warp speed, the region keeps a copy of what queries read
and points its `<region>.<table>` view at it. One job here: decide, fill, look up, evict.

- Key: (region, table, metadata location). The executor reads the current snapshot on every run,
  so a commit is a new location: the old copy is never served again and is dropped.
- Columns: only those the region SQL can reference (`columns_used`, a sqlglot walk that is a
  superset by construction; shapes it cannot bound exactly, `t.*` or a star over a table, need
  every column; NATURAL/USING joins, COLUMNS(...), PIVOT or a row referenced as a struct bypass).
- Admission: a snapshot is copied on its second scan (a table that commits faster than it is
  queried twice is never copied); the copy holds the union of the columns its scans used, and is
  rebuilt with the union when a scan needs a column it lacks.
- Memory: each copy is its own in-memory database ATTACHed with COMPRESS and CHECKPOINTed after
  the fill (DuckDB then stores it compressed: ~5x smaller, and scans faster than uncompressed);
  its size is measured (`duckdb_memory()`, IN_MEMORY_TABLE, around the fill under one lock).
  Budget `SKYFED_SCAN_CACHE_MB` (default 1024; 0 turns the cache off): resident copies plus the
  fill's uncompressed estimate (rows x type widths: the transient peak before the checkpoint)
  must fit, least recently used copies are evicted; a table whose estimate exceeds the budget is
  never copied.
- Measured, per statement: the fastest run of a region SQL over copies is compared with its fastest
  over the files (a statement first seen on copies runs once on the files to have both); one
  slower on copies (by more than SLOWER and MIN_GAP) reads the files (`bypass: slower ...`),
  re-trying the copy every REPROBE-th run (DuckDB evaluates some expressions, e.g. date_trunc on
  timestamptz, much faster straight from the Parquet pages than from a native table).
- Threads: a region's copies are filled, read and dropped only under that region's lock (the
  executor's); evicting another region's copy takes its lock without waiting, else skips it.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from skyfed.errors import SkyfedError

MB = 1024 * 1024
DEFAULT_MB = 1024
ADMIT_ON_SCAN = 2  # a snapshot is copied on its second scan
# ... and only once it has been current this long ($SKYFED_SCAN_CACHE_MIN_AGE): a streamed table that commits every
# few seconds while a dashboard polls it would otherwise be copied (seconds of work) at every commit
MIN_AGE_S = 30.0
# $SKYFED_SCAN_CACHE_FILL: "background" (default: the run that admits a snapshot reads the files and a thread makes
# the copy afterwards, so no query pays the seconds a fill takes) or "inline" (that run makes the copy and reads it)
FILL_MODES = ("background", "inline")
BACKGROUND = "copy being made in the background (this run reads the files)"
# a statement whose fastest run over copies took more than SLOWER x its fastest run over the files reads the files
# (measured: DuckDB computes date_trunc over a timestamptz column ~4x faster straight from these Parquet files than
# from a native table, so the route metric is slower on a copy); the copy is re-tried every REPROBE-th run.
# $SKYFED_SCAN_CACHE_SLOWER overrides the ratio (0: never switch). Gaps under MIN_GAP seconds are noise, not switched on.
SLOWER = 1.2
MIN_GAP = 0.02
REPROBE = 16
ALL = frozenset({"*"})  # columns_used: every column of the table


def budget_bytes() -> int:
    """The cache budget from $SKYFED_SCAN_CACHE_MB (read per run, so it can change in a live process)."""
    mb = _env_float("SKYFED_SCAN_CACHE_MB", DEFAULT_MB, "the region scan cache's budget in MB (0 turns the cache off)")
    return int(mb * MB)


def fill_in_background() -> bool:
    mode = os.environ.get("SKYFED_SCAN_CACHE_FILL", "").strip().lower() or FILL_MODES[0]
    if mode not in FILL_MODES:
        raise SkyfedError(f"SKYFED_SCAN_CACHE_FILL={mode!r} is not one of {', '.join(FILL_MODES)}",
                          "unset it (background) or set it to inline")  # fmt: skip
    return mode == "background"


def _env_float(name: str, default: float, what: str) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise SkyfedError(f"{name}={raw!r} is not a number >= 0", f"set it to {what}")
    return value


# --------------------------------------------------------------------------- columns a region SQL reads

_USED: OrderedDict[tuple[str, str, tuple[str, ...]], dict[str, frozenset[str]] | None] = OrderedDict()
_USED_LOCK = threading.Lock()


def columns_used(sql: str, region: str, tables: Iterable[str]) -> dict[str, frozenset[str]] | None:
    """Lower-cased names each `region.<table>` of `tables` may be read by in `sql` (a superset), ALL for
    every column, or None when unsure (the caller bypasses the cache). Memoized per SQL text."""
    key = (sql, region, tuple(sorted(tables)))
    with _USED_LOCK:
        if key in _USED:
            _USED.move_to_end(key)
            return _USED[key]
    found = _analyse(sql, region.lower(), {t.lower(): t for t in key[2]})
    with _USED_LOCK:
        _USED[key] = found
        while len(_USED) > 512:
            _USED.popitem(last=False)
    return found


def _analyse(sql: str, region: str, tables: dict[str, str]) -> dict[str, frozenset[str]] | None:
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.SqlglotError:
        return None
    if any(True for _ in tree.find_all(exp.Pivot, exp.Columns)):
        return None
    if any(j.args.get("using") or str(j.args.get("method") or "").upper() == "NATURAL" for j in tree.find_all(exp.Join)):
        return None  # implicit join columns
    read: set[str] = set()
    aliases: set[str] = set()
    for t in tree.find_all(exp.Table):
        aliases.add(t.alias_or_name.lower())
        if t.db.lower() == region and not t.catalog and t.name.lower() in tables:
            read.add(tables[t.name.lower()])
    for node in tree.find_all(exp.Subquery, exp.CTE):
        if node.alias:
            aliases.add(node.alias.lower())
    if not read:
        return {}
    every = False
    names: set[str] = set()
    for col in tree.find_all(exp.Column):
        if isinstance(col.this, exp.Star):  # t.*
            every = True
            continue
        name = col.name.lower()
        if not col.table and name in aliases:
            return None  # a whole row referenced as a struct
        names.add(name)
    for star in tree.find_all(exp.Star):
        if isinstance(star.parent, (exp.Count, exp.Column)):
            continue
        select = star.find_ancestor(exp.Select)
        source = select.args.get("from") or select.args.get("from_") if select is not None else None
        if select is not None and not select.args.get("joins") and source is not None and isinstance(source.this, exp.Subquery):
            continue  # a star over a derived table: its columns are explicit (and walked above)
        every = True
    used = ALL if every else frozenset(names)
    return {t: used for t in read}


# --------------------------------------------------------------------------- the cache


@dataclass
class Copy:
    """One table's copy: `relation` is what the region's view selects from."""

    region: str
    table: str
    location: str  # metadata.json the copy was read from (its snapshot)
    snapshot_id: Any
    database: str  # the in-memory database ATTACHed for it
    columns: tuple[str, ...]
    rows: int
    bytes: int  # measured after compression (estimate if the measurement failed)
    estimate_bytes: int  # uncompressed estimate used for admission
    fill_seconds: float
    used: int = 0  # LRU clock
    hits: int = 0

    @property
    def relation(self) -> str:
        return f'"{self.database}".main."{self.table}"'


@dataclass
class Decision:
    """What a run does with one table: hit | fill | miss | bypass (and why)."""

    state: str
    reason: str = ""
    copy: Copy | None = None  # hit: the copy; fill: the copy it replaces, if any
    columns: tuple[str, ...] = ()  # fill: what to copy
    estimate_bytes: int = 0

    def label(self) -> str:
        return f"{self.state}: {self.reason}" if self.reason else self.state


def type_width(t: pa.DataType) -> int:
    """Bytes per value of a type in an uncompressed DuckDB table (strings: the 16-byte string_t; longer
    strings also keep their bytes in a heap, not counted: the measured size replaces this after a fill)."""
    if pa.types.is_boolean(t) or pa.types.is_int8(t) or pa.types.is_uint8(t):
        return 1
    if pa.types.is_int16(t) or pa.types.is_uint16(t):
        return 2
    if pa.types.is_int32(t) or pa.types.is_uint32(t) or pa.types.is_float32(t) or pa.types.is_date32(t):
        return 4
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_temporal(t):
        return 8
    return 16


def estimate_bytes(schema: pa.Schema, columns: Iterable[str], rows: int) -> int:
    return rows * sum(type_width(schema.field(c).type) for c in columns)


class ScanCache:
    """The process's copies, one per (region, table) at most: the current snapshot's."""

    def __init__(self, region_lock: Callable[[str], threading.Lock]):
        self._region_lock = region_lock
        self._lock = threading.Lock()  # the dicts below
        self._memory = threading.Lock()  # ATTACH/fill/DETACH, so each fill's memory delta is its own
        self._copies: dict[tuple[str, str], Copy] = {}
        self._scans: dict[tuple[str, str], tuple[str, int, frozenset[str]]] = {}  # location, scans, columns seen
        self._dropped: list[Copy] = []  # stale copies no view serves any more, detached at the next chance
        # (region, region SQL) -> [fastest seconds over the files, fastest over copies, runs preferring the files,
        # runs measured on the files]
        self._timings: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._clock = itertools.count(1)
        self._names = itertools.count(1)
        self.fills = 0
        self._pending: dict[tuple[str, str], str] = {}  # (region, table) -> location being copied in the background
        self._threads: list[threading.Thread] = []
        self.last_fill_error: str | None = None  # the last background fill that failed (region.table: error)
        self.evictions = 0

    # ------------------------------------------------------------- look up / decide (under the region's lock)

    def decide(self, con: Any, region: str, table: str, location: str, snapshot_id: Any, used: frozenset[str] | None,
               schema: pa.Schema, rows: int | None, committed_at: float | None = None) -> Decision:  # fmt: skip
        """Hit, fill, miss or bypass for one table of a run; the caller holds the region's lock.
        `committed_at`: the snapshot's commit time (epoch seconds), for the minimum age."""
        key = (region, table)
        budget = budget_bytes()
        with self._lock:
            copy = self._copies.get(key)
            if copy is not None and (copy.location != location or budget <= 0):
                del self._copies[key]  # the table moved on (or the cache was turned off): never served again
                self._dropped.append(copy)
                copy = None
        self._drop_pending(con, wait=False)
        if budget <= 0:
            return Decision("bypass", "off (SKYFED_SCAN_CACHE_MB=0)")
        if used is None:
            return Decision("bypass", "columns read not known for this SQL shape")
        names = {f.name.lower(): f.name for f in schema}
        wanted = [f.name for f in schema] if used == ALL else [names[c] for c in names if c in used]
        if not wanted:
            return Decision("bypass", "no column read")
        with self._lock:
            seen_at, scans, seen = self._scans.get(key, ("", 0, frozenset()))
            if seen_at != location:
                scans, seen = 0, frozenset()
            scans += 1
            seen = seen | frozenset(wanted)
            self._scans[key] = (location, scans, seen)
            if copy is not None and set(wanted) <= set(copy.columns):
                copy.used = next(self._clock)
                copy.hits += 1
                return Decision("hit", copy=copy)
        if scans < ADMIT_ON_SCAN:
            return Decision("miss", "first scan of this snapshot (copied on the second)")
        with self._lock:
            if self._pending.get(key) == location:
                return Decision("miss", BACKGROUND)
        min_age = _env_float("SKYFED_SCAN_CACHE_MIN_AGE", MIN_AGE_S, "the seconds a snapshot must have been current "
                             "before it is copied (0: at once)")  # fmt: skip
        age = time.time() - committed_at if committed_at is not None else None
        if age is not None and age < min_age:
            return Decision("miss", f"snapshot committed {max(age, 0):.0f} s ago: copied once it is {min_age:g} s old "
                            "(a table that commits more often is never copied)")  # fmt: skip
        if rows is None:
            return Decision("bypass", "row count of the snapshot unknown")
        union = seen | frozenset(copy.columns if copy is not None else ())
        columns = tuple(f.name for f in schema if f.name in union)
        need = estimate_bytes(schema, columns, rows)
        if need > budget:  # the union does not fit: just this scan's columns
            columns = tuple(wanted)
            need = estimate_bytes(schema, columns, rows)
        if need > budget:
            return Decision("bypass", f"too big: ~{need / MB:.2f} MB uncompressed > budget {budget / MB:.2f} MB")
        return Decision("fill", "columns added" if copy is not None else "", copy, columns, need)

    # ------------------------------------------------------------- measured: copies or files, per statement

    def slower(self, region: str, sql: str) -> str | None:
        """Why this statement reads the files although copies may exist (it ran slower on them), or None."""
        ratio = _env_float("SKYFED_SCAN_CACHE_SLOWER", SLOWER, "the ratio of a copy's time to the files' above which a "
                           "statement reads the files (0: always the copy)")  # fmt: skip
        with self._lock:
            t = self._timings.get((region, sql))
            if ratio <= 0 or t is None or t[1] == float("inf"):
                return None
            if t[0] == float("inf"):  # measured on copies only (its first run filled them): once on the files
                return "measuring this SQL on the files once, to compare with the copy"
            if t[3] < 2:  # one run on the files may be the process's first (cold metadata, extension load)
                return "measuring this SQL on the files once more (a first run's time includes warm-up)"
            if not (t[1] > ratio * t[0] and t[1] - t[0] > MIN_GAP):
                return None
            t[2] += 1
            if t[2] % REPROBE == 0:
                return None  # measure the copy again now and then (load, a new snapshot, other columns)
            return (f"slower on the copy for this SQL (fastest {t[1]:.3f} s vs {t[0]:.3f} s on the files; "
                    f"tried again every {REPROBE} runs)")  # fmt: skip

    def record(self, region: str, sql: str, on: str, seconds: float) -> None:
        """A run's execute seconds, `on` "files" (no table from a copy) or "copy" (every table from one)."""
        with self._lock:
            # [fastest on the files, fastest on copies, runs since switched to the files, runs on the files]
            t = self._timings.setdefault((region, sql), [float("inf"), float("inf"), 0.0, 0])
            self._timings.move_to_end((region, sql))
            i = 0 if on == "files" else 1
            t[i] = min(t[i], seconds)
            t[3] += on == "files"
            while len(self._timings) > 1024:
                self._timings.popitem(last=False)

    # ------------------------------------------------------------- fill and evict

    def fill(self, con: Any, decision: Decision, region: str, table: str, location: str, snapshot_id: Any,
             keep: frozenset[str] = frozenset()) -> Copy | None:  # fmt: skip
        """Copy `decision.columns` of the snapshot at `location` into a new compressed in-memory database.
        None (nothing kept) when the budget cannot be freed: copies of busy regions, and `keep` (the
        databases this run already reads), are not evicted."""
        key = (region, table)
        started = time.perf_counter()
        with self._memory:
            old = decision.copy
            if old is not None:
                with self._lock:
                    if self._copies.get(key) is old:
                        del self._copies[key]
                self._detach(con, old)
            self._drop_pending(con, wait=True)
            if not self._make_room(con, region, decision.estimate_bytes, keep):
                return None
            name = f"_sf_scan_{next(self._names)}"
            before = _in_memory_bytes(con)
            con.execute(f"ATTACH ':memory:' AS \"{name}\" (COMPRESS)")
            try:
                cols = ", ".join(f'"{c}"' for c in decision.columns)
                quoted = location.replace("'", "''")
                con.execute(f"CREATE TABLE \"{name}\".main.\"{table}\" AS SELECT {cols} FROM iceberg_scan('{quoted}')")
                con.execute(f'CHECKPOINT "{name}"')  # compresses the in-memory table
                rows = int(con.execute(f'SELECT count(*) FROM "{name}".main."{table}"').fetchone()[0])
                size = _in_memory_bytes(con) - before
            except BaseException:
                try:
                    con.execute(f'DETACH "{name}"')
                except Exception:  # noqa: BLE001 - the original error is the one to report
                    pass
                raise
            copy = Copy(region, table, location, snapshot_id, name, decision.columns, rows,
                        size if size > 0 else decision.estimate_bytes, decision.estimate_bytes,
                        time.perf_counter() - started, next(self._clock))  # fmt: skip
            with self._lock:
                self._copies[key] = copy
                self.fills += 1
        return copy

    # ------------------------------------------------------------- background fills

    def pending(self, region: str, table: str, location: str) -> None:
        with self._lock:
            self._pending[(region, table)] = location

    def pending_done(self, region: str, table: str, location: str) -> None:
        with self._lock:
            if self._pending.get((region, table)) == location:
                del self._pending[(region, table)]

    def start(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def fill_queued(self, con: Any, decision: Decision, region: str, table: str, location: str,
                    snapshot_id: Any) -> Copy | None:  # fmt: skip
        """A queued fill, run later under the region's lock: skipped when the copy exists by now."""
        with self._lock:
            have = self._copies.get((region, table))
            if have is not None and have.location == location and set(decision.columns) <= set(have.columns):
                return have
            seen_at = self._scans.get((region, table), (location,))[0]
            if seen_at != location or (have is not None and have.location != location):
                return None  # the table moved on while the fill waited: the next scans decide again
            decision.copy = have
        return self.fill(con, decision, region, table, location, snapshot_id)

    def wait_for_fills(self, timeout: float | None = None) -> float:
        """Seconds spent waiting for the background fills queued so far (benchmarks, tests, shutdown)."""
        started = time.perf_counter()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)
        return time.perf_counter() - started

    def _make_room(self, con: Any, region: str, need: int, keep: frozenset[str]) -> bool:
        """Evict least recently used copies until resident + `need` fits the budget (under self._memory)."""
        budget = budget_bytes()
        while True:
            with self._lock:
                resident = sum(c.bytes for c in self._copies.values())
                if resident + need <= budget:
                    return True
                victims = sorted((c for c in self._copies.values() if c.database not in keep), key=lambda c: c.used)
            for victim in victims:
                lock = self._region_lock(victim.region)
                own = victim.region == region  # the caller holds this lock already
                if not own and not lock.acquire(blocking=False):
                    continue  # a run of that region is using it
                try:
                    with self._lock:
                        if self._copies.get((victim.region, victim.table)) is not victim:
                            continue
                        del self._copies[(victim.region, victim.table)]
                    self._detach(con, victim)
                    self.evictions += 1
                    break
                finally:
                    if not own:
                        lock.release()
            else:
                return False

    def _drop_pending(self, con: Any, wait: bool) -> None:
        """Detach stale copies (no view reads them: their region re-points before its next query)."""
        if not self._dropped:
            return
        if not wait:
            if not self._memory.acquire(blocking=False):
                return  # a fill is running: the next fill detaches them
            try:
                self._drop_pending(con, wait=True)
            finally:
                self._memory.release()
            return
        with self._lock:
            stale, self._dropped = self._dropped, []
        for copy in stale:
            self._detach(con, copy)

    def _detach(self, con: Any, copy: Copy) -> None:
        con.execute(f'DETACH DATABASE IF EXISTS "{copy.database}"')

    def clear(self, con: Any) -> None:
        """Drop every copy and forget every scan (no run may be active: tests and benchmarks call it between queries)."""
        with self._memory:
            with self._lock:
                copies = list(self._copies.values()) + self._dropped
                self._copies, self._dropped, self._scans = {}, [], {}
                self._timings.clear()
                self.last_fill_error = None
            for copy in copies:
                self._detach(con, copy)

    # ------------------------------------------------------------- introspection (report, tests, bench)

    def copies(self) -> list[dict[str, Any]]:
        """The resident copies (region, table, snapshot, columns, rows, bytes, hits), least recently used first."""
        with self._lock:
            return [{"region": c.region, "table": c.table, "snapshot_id": c.snapshot_id, "columns": list(c.columns),
                     "rows": c.rows, "bytes": c.bytes, "estimate_bytes": c.estimate_bytes,
                     "fill_seconds": round(c.fill_seconds, 4), "hits": c.hits, "database": c.database}
                    for c in sorted(self._copies.values(), key=lambda c: c.used)]  # fmt: skip

    def resident_bytes(self) -> int:
        with self._lock:
            return sum(c.bytes for c in self._copies.values())


def _in_memory_bytes(con: Any) -> int:
    row = con.execute("SELECT memory_usage_bytes FROM duckdb_memory() WHERE tag = 'IN_MEMORY_TABLE'").fetchone()
    return int(row[0]) if row else 0

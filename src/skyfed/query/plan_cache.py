"""Plan cache: a bounded LRU of federated plans, shared by every Federation in the process.

Planning (sqlglot parse, qualify, strategy choice, governance rewrite per region, SQL
generation per dialect) costs 15-60 ms per statement; a dashboard repeats the same few.
A plan is a pure function of (see `Federation._plan_key`):

- the statement, normalized (sqlglot: parsed as DuckDB and printed back without comments,
  identifiers kept as written; `flight_leg@N` already expanded, so the registered version is in it);
- the catalog: every canonical and reference contract's name, version and column types, the
  regions' stores (engine, project, dataset) and the live source tables known with their columns;
- each reference file's size and mtime (a small one is broadcast, its BigQuery copy is named
  by that version) and the broadcast thresholds;
- the caller's policies: role, its masks, row access, residency, classifications, the salt's
  hash (`Governor.fingerprint`), and the coordinator region (residency depends on it);
- pushdown on or off.

Not in the key, on purpose: table snapshot ids. A new commit changes what a region's SQL
returns, never which SQL it is: the planner reads no table sizes or statistics (broadcast
decisions come from the reference files' footers, keyed above; whether semi-join keys are
shipped is decided at run time from the keys the build side returned).

Entries are deep-copied out (the engine writes run-time decisions into a plan's fragments).
Size: $SKYFED_PLAN_CACHE_SIZE entries (default 256; 0 turns the cache off).
"""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

DEFAULT_SIZE = int(os.environ.get("SKYFED_PLAN_CACHE_SIZE", "256"))


class PlanCache:
    """A thread-safe LRU of plans; `get` returns a private copy."""

    def __init__(self, max_entries: int = DEFAULT_SIZE):
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            plan = self._entries.get(key)
            if plan is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
        return copy.deepcopy(plan)

    def put(self, key: Hashable, plan: Any) -> None:
        if self.max_entries <= 0:
            return
        stored = copy.deepcopy(plan)
        with self._lock:
            self._entries[key] = stored
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


PLANS = PlanCache()


class TextMemo:
    """A bounded memo of a pure function of a statement's text (normalization, guard results)."""

    def __init__(self, max_entries: int = 1024):
        self.max_entries = max_entries
        self._memo: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or(self, text: str, compute: Any) -> Any:
        with self._lock:
            if text in self._memo:
                self._memo.move_to_end(text)
                return self._memo[text]
        value = compute(text)
        with self._lock:
            self._memo[text] = value
            while len(self._memo) > self.max_entries:
                self._memo.popitem(last=False)
        return value


def normalize_statement(sql: str) -> str:
    """Whitespace, comments and keyword case removed; identifiers and literals kept as written
    (DuckDB names result columns as the user spelled them, so `AS Flights` and `AS flights` differ)."""
    import sqlglot

    try:
        return sqlglot.parse_one(sql, read="duckdb").sql("duckdb", comments=False)
    except sqlglot.errors.SqlglotError:
        return sql


_NORMALIZED = TextMemo()


def normalized(sql: str) -> str:
    return _NORMALIZED.get_or(sql, normalize_statement)

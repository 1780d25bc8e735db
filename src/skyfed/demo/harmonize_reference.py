"""Reference semantics of harmonization: the macros, and a slow-but-plain mapping evaluator.

This is the executable definition the ingestion engine must agree with (and what the
demo tests use to prove that `examples/airline/skyfed.yaml` reproduces the generator's
ground truth exactly). It runs one mapping at a time in DuckDB over Arrow tables:

1. read the source table (gcs objects are parsed here: CSV with every column as text,
   lines with a wrong field count set aside as `malformed`; JSON lines; Parquet);
2. evaluate the mapping's column expressions (session TimeZone = UTC, macros below);
3. run the contract checks; the first failing check is the row's quarantine rule;
4. keep, per mapping key, the passing row with the greatest cursor.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from skyfed.demo.contracts import Col, ContractDef
from skyfed.ingest.reference import MACROS as ENGINE_MACROS
from skyfed.ingest.reference import TABLE_MACROS

# One definition of the macros: the ingestion engine's own (skyfed.ingest.reference).
MACROS = ENGINE_MACROS + "\n".join(TABLE_MACROS.values())


def connect(reference: dict[str, pa.Table]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in UTC with the reference tables and the harmonization macros."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name, table in reference.items():
        con.register(f"__{name}", table)
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM __{name}")
        con.unregister(f"__{name}")
    con.execute(MACROS)
    return con


_DT = re.compile(r"/dt=([0-9-]+)/")


def read_gcs_table(objects: dict[str, bytes], pattern: str, fmt: str) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Objects matching `pattern` as one table (union by name) plus the unparsable lines.

    Adds `dt` (hive partition) and `_position` (object#L<line> or object#row<i>).
    """
    import fnmatch

    names = sorted(k for k in objects if fnmatch.fnmatchcase(k, pattern))
    parts: list[pa.Table] = []
    bad: list[dict[str, Any]] = []
    for name in names:
        data = objects[name]
        if fmt == "csv":
            header = data.split(b"\n", 1)[0].decode().split(",")
            rejected: list[int] = []

            def handler(row, _rej=rejected):  # only called for bad lines
                _rej.append(row.number)
                return "skip"

            t = pacsv.read_csv(
                io.BytesIO(data),
                read_options=pacsv.ReadOptions(use_threads=False),
                parse_options=pacsv.ParseOptions(invalid_row_handler=handler),
                convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                                     strings_can_be_null=True, null_values=[""]),
            )
            # pyarrow numbers rows from 1 including the header: row number == physical line number
            good_lines = np.setdiff1d(np.arange(2, t.num_rows + len(rejected) + 2), np.array(rejected, np.int64))
            for line in rejected:
                bad.append({"position": f"{name}#L{line}"})
            pos = [f"{name}#L{i}" for i in good_lines]
        elif fmt == "jsonl":
            t = pajson.read_json(io.BytesIO(data))
            pos = [f"{name}#L{i + 1}" for i in range(t.num_rows)]
        elif fmt == "parquet":
            t = pq.read_table(io.BytesIO(data))
            pos = [f"{name}#row{i}" for i in range(t.num_rows)]
        else:  # pragma: no cover
            raise ValueError(fmt)
        m = _DT.search("/" + name)
        t = t.append_column("dt", pa.array([m.group(1) if m else None] * t.num_rows, pa.string()))
        t = t.append_column("_position", pa.array(pos, pa.string()))
        parts.append(t)
    if not parts:
        return pa.table({}), bad
    return pa.concat_tables(parts, promote_options="permissive"), bad


def contract_from_yaml(name: str, spec: dict[str, Any]) -> ContractDef:
    cols = []
    for cname, c in spec["columns"].items():
        checks = dict(c.get("checks") or {})
        cols.append(Col(cname, c["type"], c.get("nullable", True), checks, c.get("classification"), c.get("description", "")))
    return ContractDef(name, tuple(spec.get("key", [])), tuple(cols), spec.get("description", ""))


@dataclass
class MappingResult:
    rows: pa.Table  # de-duplicated canonical rows, contract schema
    quarantine: pa.Table  # source_key, source_position, rule, column
    read: int
    duplicates_removed: int


def run_mapping(con: duckdb.DuckDBPyConnection, source: pa.Table, mapping: dict[str, Any], contract: ContractDef,
                refs: dict[str, pa.Array], malformed: list[dict[str, Any]] | None = None) -> MappingResult:
    """Evaluate one mapping over `source` with the reference semantics."""
    from skyfed.demo.world import first_failure

    con.register("src", source)
    exprs = ", ".join(f"({mapping['columns'][c.name]}) AS \"{c.name}\"" for c in contract.columns)
    key = " || '|' || ".join(f"CAST(\"{k}\" AS VARCHAR)" for k in mapping["key"])
    pos = "_position" if "_position" in source.column_names else "NULL"
    where = f"WHERE {mapping['filter']}" if mapping.get("filter") else ""
    sql = (f"SELECT {exprs}, {key} AS __key, \"{mapping['cursor']}\" AS __cursor, {pos} AS __position, "
           f"row_number() OVER () AS __row FROM src {where}")
    out = con.execute(sql).arrow()
    if isinstance(out, pa.RecordBatchReader):
        out = out.read_all()
    con.unregister("src")
    cols = {c.name: out.column(c.name).combine_chunks().cast(_arrow(c.type))
            for c in contract.columns}
    first, rules = first_failure(contract, cols, refs)
    bad = first >= 0
    q = pa.table({
        "source_key": out.column("__key").filter(pa.array(bad)),
        "source_position": out.column("__position").cast(pa.string()).filter(pa.array(bad)),
        "rule": pa.array([rules[i][1] for i in first[bad]], pa.string()),
        "column": pa.array([rules[i][0] for i in first[bad]], pa.string()),
    })
    if malformed:
        q = pa.concat_tables([q, pa.table({
            "source_key": pa.nulls(len(malformed), pa.string()),
            "source_position": pa.array([b["position"] for b in malformed], pa.string()),
            "rule": pa.array(["malformed"] * len(malformed), pa.string()),
            "column": pa.nulls(len(malformed), pa.string()),
        })])
    good = pa.table({**cols, "__key": out.column("__key"), "__cursor": out.column("__cursor"),
                     "__row": out.column("__row")}).filter(pa.array(~bad))
    con.register("good", good)
    names = ", ".join(f'"{c.name}"' for c in contract.columns)
    dedup = con.execute(
        f"SELECT {names} FROM good QUALIFY row_number() OVER (PARTITION BY __key ORDER BY __cursor DESC, __row) = 1"
    ).arrow()
    if isinstance(dedup, pa.RecordBatchReader):
        dedup = dedup.read_all()
    con.unregister("good")
    rows = pa.table({c.name: dedup.column(c.name).cast(_arrow(c.type)) for c in contract.columns}, schema=contract.schema())
    read = source.num_rows + len(malformed or [])
    return MappingResult(rows, q, read, good.num_rows - rows.num_rows)


def _arrow(type_name: str) -> pa.DataType:
    from skyfed.demo.contracts import ARROW_TYPES

    return ARROW_TYPES[type_name]

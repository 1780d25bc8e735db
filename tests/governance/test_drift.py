"""Drift at ingestion: decisions per mode, recorded in the metadata database, and their SQL run in DuckDB."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from skyfed.connectors.base import Reject
from skyfed.contracts.harmonize import QUARANTINE, compile_mapping
from skyfed.contracts.types import duckdb_types_of
from skyfed.errors import SkyfedError
from skyfed.governance.config import Governance, load_governance
from skyfed.governance.drift import check_drift, drift_decisions, fits_sql
from skyfed.spec.models import PlatformSpec
from tests.governance.conftest import spec_doc

MAPPING: dict[str, Any] = {
    "name": "eu_bookings",
    "source": "eu.ops",
    "table": "bookings",
    "contract": "booking",
    "key": ["booking_ref"],
    "columns": {
        "booking_id": "'EU-' || booking_ref",
        "region": "'eu'",
        "passenger_name": "passenger_name",
        "email": "lower(mail)",
        "phone": "phone",
        "seats": "CAST(seat_count AS INTEGER)",
        "fare": "fare_eur",
    },
}
CSV_MAPPING: dict[str, Any] = {
    **copy.deepcopy(MAPPING),
    "name": "na_bookings",
    "source": "na.exports",
    "columns": {**MAPPING["columns"], "region": "'na'", "seats": "TRY_CAST(seat_count AS INTEGER)",
                "fare": "TRY_CAST(fare_eur AS DOUBLE)"},
}
V1 = pa.schema([("booking_ref", pa.string()), ("passenger_name", pa.string()), ("mail", pa.string()),
                ("phone", pa.string()), ("seat_count", pa.int64()), ("fare_eur", pa.float64())])


def spec() -> PlatformSpec:
    doc = spec_doc()
    doc["regions"]["na"] = {
        "project": "p", "location": "us-east1", "store": {"kind": "iceberg", "warehouse": "/tmp/wh"},
        "sources": {"exports": {"kind": "gcs", "bucket": "b",
                                "tables": {"bookings": {"pattern": "bookings/*.csv", "format": "csv"}}}},
    }
    doc["mappings"] = [copy.deepcopy(MAPPING), copy.deepcopy(CSV_MAPPING)]
    return PlatformSpec.model_validate(doc)


def gov(default: Any = "evolve", **mappings: Any) -> Governance:
    return Governance.model_validate({"drift": {"default": default, "mappings": mappings}})


def changed(schema: pa.Schema, column: str, type_: pa.DataType) -> pa.Schema:
    return schema.set(schema.get_field_index(column), pa.field(column, type_))


def batch(seat_counts: list[Any], seat_type: pa.DataType | None = None, **extra: list[Any]) -> pa.RecordBatch:
    n = len(seat_counts)
    cols = {
        "booking_ref": [f"R{i}" for i in range(n)],
        "passenger_name": [f"P {i}" for i in range(n)],
        "mail": [f"P{i}@MAIL.EXAMPLE" for i in range(n)],
        "phone": [None] * n,
        "seat_count": pa.array(seat_counts, seat_type or pa.string()),
        "fare_eur": [10.0 * (i + 1) for i in range(n)],
        **extra,
    }
    return pa.RecordBatch.from_pydict(cols)


def first_check(sp: PlatformSpec, name: str = "eu_bookings", schema: pa.Schema = V1, g: Governance | None = None) -> None:
    plan = check_drift(sp, mapping(sp, name), schema, run_id="r1", gov=g or gov())
    assert plan.first_seen and plan.changes == []


def mapping(sp: PlatformSpec, name: str) -> Any:
    return next(m for m in sp.mappings if m.name == name)


def test_first_check_accepts_and_unchanged_schema_decides_nothing(home: Path) -> None:
    sp = spec()
    first_check(sp)
    plan = check_drift(sp, mapping(sp, "eu_bookings"), V1, run_id="r2", gov=gov("freeze"))
    assert not plan.first_seen and plan.changes == [] and drift_decisions("eu_bookings") == []
    # string vs large_string is the same column to DuckDB: not a type change, even under freeze
    plan = check_drift(sp, mapping(sp, "eu_bookings"), changed(V1, "mail", pa.large_string()), gov=gov("freeze"))
    assert plan.changes == []


def test_evolve_new_columns_carried_or_ignored_and_recorded(home: Path) -> None:
    sp = spec()
    first_check(sp)
    doc = spec_doc()
    doc["mappings"] = [copy.deepcopy(MAPPING)]
    doc["mappings"][0]["columns"]["phone"] = "coalesce(phone, mobile)"  # the mapping was edited to read `mobile`
    sp2 = PlatformSpec.model_validate(doc)
    now = V1.append(pa.field("mobile", pa.string())).append(pa.field("loyalty_tier", pa.int32()))
    plan = check_drift(sp2, mapping(sp2, "eu_bookings"), now, run_id="r2", gov=gov())
    by = {c.column: c for c in plan.changes}
    assert by["mobile"].decision == "carried" and "booking.phone" in by["mobile"].detail
    assert by["loyalty_tier"].decision == "ignored" and by["loyalty_tier"].new_type == "INTEGER"
    assert "add an optional column to contract booking" in by["loyalty_tier"].detail
    rows = drift_decisions("eu_bookings")
    assert {(r["column"], r["change"], r["mode"], r["decision"]) for r in rows} == {
        ("mobile", "new_column", "evolve", "carried"), ("loyalty_tier", "new_column", "evolve", "ignored")}
    assert all(r["run_id"] == "r2" and r["decided_at"] is not None for r in rows)
    # evolve accepted them: the next run sees no change
    assert check_drift(sp2, mapping(sp2, "eu_bookings"), now, gov=gov()).changes == []


def test_freeze_refuses_with_source_table_column_types_and_options(home: Path) -> None:
    sp = spec()
    first_check(sp)
    now = changed(V1, "seat_count", pa.string())
    with pytest.raises(SkyfedError) as err:
        check_drift(sp, mapping(sp, "eu_bookings"), now, run_id="r2", gov=gov(eu_bookings="freeze"))
    msg, hint = err.value.message, err.value.hint or ""
    for part in ("eu_bookings", "postgres source eu.ops", "table bookings", "seat_count", "BIGINT", "VARCHAR", "freeze"):
        assert part in msg, part
    for option in ("evolve", "discard_row", "discard_value", "accept_schema"):
        assert option in hint, option
    [row] = drift_decisions("eu_bookings")
    assert (row["change"], row["old_type"], row["new_type"], row["decision"]) == ("type_change", "BIGINT", "VARCHAR", "refused")
    # nothing was accepted: the same refusal again (recorded once), and evolve then accepts the change
    with pytest.raises(SkyfedError):
        check_drift(sp, mapping(sp, "eu_bookings"), now, run_id="r3", gov=gov(eu_bookings="freeze"))
    assert len(drift_decisions("eu_bookings")) == 1 and drift_decisions("eu_bookings")[0]["last_run_id"] == "r3"
    plan = check_drift(sp, mapping(sp, "eu_bookings"), now, gov=gov(eu_bookings="evolve"))
    assert [c.decision for c in plan.changes] == ["accepted"] and "booking.seats" in plan.changes[0].detail


def test_freeze_refuses_a_new_column(home: Path) -> None:
    sp = spec()
    first_check(sp)
    with pytest.raises(SkyfedError, match=r"new column loyalty_tier \(VARCHAR\) appeared"):
        check_drift(sp, mapping(sp, "eu_bookings"), V1.append(pa.field("loyalty_tier", pa.string())),
                    gov=gov(eu_bookings={"columns": "freeze", "types": "evolve"}))


def test_discard_row_quarantines_values_that_do_not_fit_the_old_type(home: Path) -> None:
    """The source's seat_count changed from BIGINT to text; rows whose text is not an exact integer go to quarantine."""
    sp = spec()
    first_check(sp)
    plan = check_drift(sp, mapping(sp, "eu_bookings"), changed(V1, "seat_count", pa.string()), run_id="r2",
                       gov=gov(eu_bookings="discard_row"))
    [change] = plan.changes
    assert (change.change, change.old_type, change.new_type, change.decision) == ("type_change", "BIGINT", "VARCHAR", "quarantine_rows")
    rejects: list[Reject] = []
    out = plan.apply(batch(["2", "abc", None, "3.5", " 7 ", "12x"]), rejects.append)
    assert isinstance(out, pa.RecordBatch)
    assert out.column("booking_ref").to_pylist() == ["R0", "R2", "R4"]
    assert out.schema.field("seat_count").type == pa.int64()  # the mapping reads the type it was written for
    assert out.column("seat_count").to_pylist() == [2, None, 7]
    assert out.column("mail").to_pylist() == ["P0@MAIL.EXAMPLE", "P2@MAIL.EXAMPLE", "P4@MAIL.EXAMPLE"]
    assert sorted(r.location for r in rejects) == ["booking_ref=R1", "booking_ref=R3", "booking_ref=R5"]
    assert all("seat_count changed type BIGINT -> VARCHAR" in r.reason and "discard_row" in r.reason for r in rejects)
    assert {r.raw for r in rejects if r.location == "booking_ref=R1"} == {
        '{"booking_ref":"R1","passenger_name":"P 1","mail":"P1@MAIL.EXAMPLE","phone":null,"seat_count":"abc","fare_eur":20.0}'}

    with pytest.raises(SkyfedError, match=r"1 row\(s\) of eu.ops.bookings must be quarantined by its drift rules, first at booking_ref=R0"):
        plan.apply(batch(["abc"]))  # no quarantine to hand the row to: an error, never a silent drop

    # the kept rows go through the real harmonize statement of the mapping unchanged
    m, contract = mapping(sp, "eu_bookings"), sp.contracts["booking"]
    harm = compile_mapping(m, contract, {}, duckdb_types_of(out.schema), {})
    con = duckdb.connect()
    con.register("__batch", pa.Table.from_batches([out]))
    rows = con.sql(harm.select).to_arrow_table()
    assert rows.column("seats").to_pylist() == [2, None, 7]
    assert [len(r) for r in rows.column(QUARANTINE).to_pylist()] == [0, 1, 0]  # seats is required: NULL is judged


def test_discard_row_sql_fragments_evaluate_in_duckdb(home: Path) -> None:
    """The expressions work inside any SELECT over the batch (the harmonize statement's parse step)."""
    sp = spec()
    first_check(sp)
    plan = check_drift(sp, mapping(sp, "eu_bookings"), changed(V1, "seat_count", pa.float64()),
                       gov=gov(eu_bookings="discard_row"))
    [c] = plan.changes
    con = duckdb.connect()
    con.register("__batch", pa.Table.from_batches([batch([1.0, 1.5, None, 9.0], pa.float64())]))
    got = con.sql(f"SELECT {c.value_sql} AS v, {c.quarantine_sql} AS why FROM __batch").fetchall()
    assert [v for v, _ in got] == [1, 2, None, 9]  # TRY_CAST rounds 1.5 ...
    assert [why is not None for _, why in got] == [False, True, False, False]  # ... so the exact check quarantines it


def test_discard_value_nulls_and_warns(home: Path) -> None:
    sp = spec()
    first_check(sp)
    plan = check_drift(sp, mapping(sp, "eu_bookings"), changed(V1, "seat_count", pa.string()),
                       gov=gov(eu_bookings={"columns": "evolve", "types": "discard_value"}))
    assert [c.decision for c in plan.changes] == ["null_values"]
    out = plan.apply(batch(["4", "four", None, "5"]), lambda r: pytest.fail(f"no row may be rejected: {r}"))
    assert out.num_rows == 4 and out.column("seat_count").to_pylist() == [4, None, None, 5]
    [(text, n)] = plan.warnings.items()
    assert n == 1 and "seat_count" in text and "set to NULL" in text
    plan.apply(pa.Table.from_batches([batch(["x", "y"])]))  # a Table in, no rejects needed
    assert plan.warnings[text] == 3


def test_new_column_discard_modes(home: Path) -> None:
    sp = spec()
    first_check(sp)
    now = V1.append(pa.field("loyalty_tier", pa.string()))
    rows = batch([1, 2, 3], pa.int64(), loyalty_tier=["gold", None, "silver"])
    plan = check_drift(sp, mapping(sp, "eu_bookings"), now, gov=gov(eu_bookings="discard_row"))
    rejects: list[Reject] = []
    out = plan.apply(rows, rejects.append)
    assert out.column("booking_ref").to_pylist() == ["R1"]
    assert [r.location for r in rejects] == ["booking_ref=R0", "booking_ref=R2"]
    assert all("new source column loyalty_tier" in r.reason for r in rejects)
    plan = check_drift(sp, mapping(sp, "eu_bookings"), now, gov=gov(eu_bookings="discard_value"))
    out = plan.apply(rows)
    assert out.num_rows == 3 and out.column("loyalty_tier").to_pylist() == [None, None, None]
    assert list(plan.warnings.values()) == [2]
    # neither discard mode accepted the column: it is still new to the next run
    assert [c.column for c in check_drift(sp, mapping(sp, "eu_bookings"), now, gov=gov()).changes] == ["loyalty_tier"]


def test_text_sources_keep_text_and_use_file_locations(home: Path) -> None:
    """CSV delivers text: the sample's inferred type flips from int64 to string; values are judged, not re-typed."""
    sp = spec()
    csv_v1 = V1.append(pa.field("_source_object", pa.string())).append(pa.field("_source_row", pa.int64()))
    first_check(sp, "na_bookings", csv_v1)
    plan = check_drift(sp, mapping(sp, "na_bookings"), changed(csv_v1, "seat_count", pa.string()),
                       gov=gov(na_bookings="discard_row"))
    rows = batch(["1", "n/a"], _source_object=["gs://b/bookings/a.csv"] * 2, _source_row=[2, 3])
    rejects: list[Reject] = []
    out = plan.apply(rows, rejects.append)
    assert out.schema.field("seat_count").type == pa.string() and out.column("seat_count").to_pylist() == ["1"]
    assert [r.location for r in rejects] == ["gs://b/bookings/a.csv:3"]
    assert '"seat_count":"n/a"' in rejects[0].raw and "_source_object" not in rejects[0].raw


def test_null_typed_columns_are_not_type_changes_and_empty_tables_are_not_observed(home: Path) -> None:
    sp = spec()
    empty = pa.schema([("_source_object", pa.string()), ("_source_row", pa.int64())])
    plan = check_drift(sp, mapping(sp, "na_bookings"), empty, gov=gov("freeze"))
    assert not plan.first_seen and plan.changes == []
    first_check(sp)
    assert check_drift(sp, mapping(sp, "eu_bookings"), changed(V1, "phone", pa.null()), gov=gov("freeze")).changes == []


def test_removed_columns_are_noted(home: Path) -> None:
    sp = spec()
    first_check(sp, schema=V1.append(pa.field("legacy_code", pa.int32())))
    plan = check_drift(sp, mapping(sp, "eu_bookings"), V1, gov=gov(eu_bookings="discard_row"))
    assert [(c.column, c.change, c.decision) for c in plan.changes] == [("legacy_code", "removed_column", "noted")]
    # it comes back as text: judged against the type it had
    plan = check_drift(sp, mapping(sp, "eu_bookings"), V1.append(pa.field("legacy_code", pa.string())),
                       gov=gov(eu_bookings="discard_row"))
    assert [(c.change, c.old_type, c.new_type) for c in plan.changes] == [("type_change", "INTEGER", "VARCHAR")]


def test_drift_settings_in_the_governance_file(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "gov.yaml"
    path.write_text("drift:\n  default: freeze\n  mappings:\n    eu_bookings: {types: discard_value}\n", encoding="utf-8")
    g = load_governance(path)
    assert g.drift.modes_for("eu_bookings").model_dump() == {"columns": "evolve", "types": "discard_value"}
    assert g.drift.modes_for("na_bookings").model_dump() == {"columns": "freeze", "types": "freeze"}
    path.write_text("drift:\n  mappings: {eu_bookings: discard}\n", encoding="utf-8")
    with pytest.raises(SkyfedError, match="drift.mappings.eu_bookings"):
        load_governance(path)
    with pytest.raises(SkyfedError, match="did you mean 'eu_bookings'"):
        check_drift(spec(), mapping(spec(), "eu_bookings"), V1, gov=gov(eu_bookingz="freeze"))


def test_fits_sql_is_exact_for_numbers() -> None:
    con = duckdb.connect()
    got = con.sql(f"SELECT {fits_sql('v', 'DECIMAL(10,2)', 'VARCHAR')} FROM (VALUES ('1.25'), ('1.255'), ('x')) t(v)").fetchall()
    assert [g[0] for g in got] == [True, False, False]


CHILD = """
import os, sys
sys.path.insert(0, {root!r})
import pyarrow as pa
from tests.governance.test_drift import V1, changed, gov, mapping, spec
from skyfed.governance.drift import check_drift
sp = spec()
check_drift(sp, mapping(sp, "eu_bookings"), changed(V1, "seat_count", pa.string()), run_id="crashed",
            gov=gov(eu_bookings="discard_row"))
os.kill(os.getpid(), 9)  # dies after deciding, before any data would be committed
"""


def test_a_rerun_after_a_crash_decides_the_same_and_records_once(home: Path) -> None:
    sp = spec()
    first_check(sp)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "SKYFED_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD.format(root=root))], check=False, env=env, cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [r["run_id"] for r in drift_decisions("eu_bookings")] == ["crashed"]
    plan = check_drift(sp, mapping(sp, "eu_bookings"), changed(V1, "seat_count", pa.string()), run_id="rerun",
                       gov=gov(eu_bookings="discard_row"))
    assert [c.decision for c in plan.changes] == ["quarantine_rows"]  # the discard still applies
    rejects: list[Reject] = []
    assert plan.apply(batch(["1", "x"]), rejects.append).num_rows == 1 and len(rejects) == 1
    [row] = drift_decisions("eu_bookings")
    assert (row["run_id"], row["last_run_id"]) == ("crashed", "rerun")


def test_with_the_real_file_connector_and_harmonize(home: Path) -> None:
    """The runner's flow with its three drift lines: a partner CSV whose seat_count turns to text in a new file."""
    from skyfed.connectors.base import ReadRequest
    from skyfed.connectors.registry import connector_for

    folder = home / "raw" / "bookings"
    folder.mkdir(parents=True)
    header = "booking_ref,passenger_name,mail,phone,seat_count,fare_eur\n"
    (folder / "a.csv").write_text(header + "R1,A B,a@x,,2,10.5\nR2,C D,c@x,,3,11.5\n", encoding="utf-8")
    doc = spec_doc()
    doc["regions"]["na"] = {
        "project": "p", "location": "us-east1", "store": {"kind": "iceberg", "warehouse": str(home / "wh")},
        "sources": {"exports": {"kind": "gcs", "path": str(home / "raw"),
                                "tables": {"bookings": {"pattern": "bookings/*.csv", "format": "csv"}}}},
    }
    doc["mappings"] = [copy.deepcopy(CSV_MAPPING)]
    sp = PlatformSpec.model_validate(doc)
    m, contract = sp.mappings[0], sp.contracts["booking"]
    g = gov(na_bookings={"columns": "evolve", "types": "discard_row"})
    connector = connector_for(sp.regions["na"].sources["exports"], m.source)
    try:
        assert check_drift(sp, m, connector.table_info(m.table).schema, run_id="r1", gov=g).first_seen
        (folder / "b.csv").write_text(header + "R3,E F,e@x,,abc,12.5\nR4,G H,g@x,,4,13.5\n", encoding="utf-8")

        info = connector.table_info(m.table)
        drift = check_drift(sp, m, info.schema, run_id="r2", gov=g)  # runner line 1
        assert [(c.column, c.old_type, c.new_type) for c in drift.changes] == [("seat_count", "BIGINT", "VARCHAR")]
        request = ReadRequest(table=m.table)
        rejects: list[Reject] = []
        read = loaded = 0
        con = duckdb.connect()
        for b in connector.read(request, connector.position(request), None, rejects.append):
            b = drift.apply(b, rejects.append)  # runner line 2
            read += b.num_rows
            con.register("__batch", pa.Table.from_batches([b]))
            harm = compile_mapping(m, contract, {}, duckdb_types_of(b.schema), {})
            out = con.sql(harm.select).to_arrow_table()
            loaded += sum(1 for r in out.column(QUARANTINE).to_pylist() if not r)
        read += len(rejects)
    finally:
        connector.close()
    assert (read, loaded, len(rejects)) == (4, 3, 1)  # read = loaded + quarantined
    assert rejects[0].location.endswith("bookings/b.csv:2"), rejects[0].location  # the data line of R3 (header = 1)
    assert '"seat_count":"abc"' in rejects[0].raw and "changed type BIGINT -> VARCHAR" in rejects[0].reason

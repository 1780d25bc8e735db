"""The generator: determinism, controlled messiness, ground-truth invariants."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from skyfed.demo import messiness as m
from skyfed.demo.contracts import CONTRACTS
from skyfed.demo.seed import manifest, objects_checksum, table_checksum, write_local
from skyfed.demo.world import TABLE_NAMES, World, WorldConfig, generate

from .conftest import SMALL


def fingerprint(w: World) -> dict[str, str]:
    fp = {}
    for region, data in w.regions.items():
        for name, t in data.tables.items():
            fp[f"{region}.{name}"] = table_checksum(t)
        if data.objects:
            fp[f"{region}.objects"] = objects_checksum(data.objects)
    for name, t in {**w.ground_truth, **w.reference}.items():
        fp[name] = table_checksum(t)
    return fp


def test_same_seed_same_bytes(small_world: World, tmp_path) -> None:
    again = generate(SMALL)
    assert fingerprint(again) == fingerprint(small_world)
    a = write_local(small_world, tmp_path / "a")
    b = write_local(again, tmp_path / "b")
    assert a == b
    for rel in a["files"]:
        assert (tmp_path / "a" / "seed" / rel).read_bytes() == (tmp_path / "b" / "seed" / rel).read_bytes()
    assert (tmp_path / "a" / "seed" / "manifest.json").read_bytes() == (tmp_path / "b" / "seed" / "manifest.json").read_bytes()


def test_different_seed_different_world(small_world: World) -> None:
    other = generate(WorldConfig(flights=SMALL.flights, seed=SMALL.seed + 1))
    fa, fb = fingerprint(small_world), fingerprint(other)
    changed = [k for k in fa if k not in ("airport", "aircraft_type") and fa[k] != fb[k]]
    assert len(changed) == len(fa) - 2  # everything but the static reference tables differs


def test_messiness_rates_match_config_and_manifest(small_world: World, tmp_path) -> None:
    man = manifest(small_world, {})
    rates = small_world.config.rates
    seen_kinds = set()
    for region, r in man["regions"].items():
        for name, st in r["tables"].items():
            role = next(k for k, v in TABLE_NAMES[region].items() if v == name)
            kinds = m.APPLICABLE[(region, role)]
            assert set(st["messy"]) == set(kinds)
            for kind, v in st["messy"].items():
                want = getattr(rates, kind)
                # exact counts: round(rate * base), so the realized rate is within 1/base of the configured one
                assert v["count"] == round(want * st["base_records"])
                assert abs(v["rate"] - want) <= 1.0 / st["base_records"]
                assert v["count"] > 0
                seen_kinds.add(kind)
    assert seen_kinds == {"null", "duplicate", "malformed", "out_of_range", "invalid_value", "late_correction"}
    # what the quarantine table holds per kind equals what was injected
    q = small_world.ground_truth["quarantine_expected"]
    for region, r in man["regions"].items():
        for name, st in r["tables"].items():
            sel = q.filter(pc.and_(pc.equal(q["region"], region), pc.equal(q["source_table"], name)))
            kinds = dict(zip(*np.unique(sel["kind"].to_numpy(zero_copy_only=False), return_counts=True)))
            injected = {k: v["count"] for k, v in st["messy"].items() if k in ("null", "out_of_range", "invalid_value")}
            if "malformed" in st["messy"]:
                assert kinds.get("malformed_line", 0) + kinds.get("malformed_value", 0) == st["messy"]["malformed"]["count"]
            for kind, count in injected.items():
                assert kinds.get(kind, 0) == count, (region, name, kind)
            assert sel.num_rows == st["quarantined"]


def test_custom_rates_are_honoured() -> None:
    rates = m.MessyRates(null=0.05, duplicate=0.0, malformed=0.02, out_of_range=0.0, invalid_value=0.0, late_correction=0.1)
    w = generate(WorldConfig(flights=2000, seed=3, rates=rates))
    st = w.stats["tables"]["na.flights"]
    assert st["messy"]["null"]["count"] == round(0.05 * st["base_records"])
    assert st["messy"]["duplicate"]["count"] == 0
    assert st["messy"]["late_correction"]["count"] == round(0.1 * st["base_records"])
    clean = generate(WorldConfig(flights=2000, seed=3, rates=m.MessyRates.zero()))
    assert clean.ground_truth["quarantine_expected"].num_rows == 0
    assert clean.ground_truth["flight_leg"].num_rows == 2000


def test_ground_truth_schemas_and_unique_keys(small_world: World) -> None:
    for name in ("flight_leg", "booking", "customer_feedback"):
        t = small_world.ground_truth[name]
        assert t.schema == CONTRACTS[name].schema()
        key = CONTRACTS[name].key[0]
        assert pc.count_distinct(t[key]).as_py() == t.num_rows
        for c in CONTRACTS[name].columns:
            if not c.nullable:
                assert t[c.name].null_count == 0, (name, c.name)
    assert small_world.ground_truth["flight_leg"].num_rows > 0.95 * SMALL.flights


def test_ground_truth_units_are_plausible(small_world: World) -> None:
    fl = small_world.ground_truth["flight_leg"]
    flying = pc.not_equal(fl["status"], "cancelled")
    f = fl.filter(flying)
    per_km = pc.divide(f["fuel_kg"], f["distance_km"]).to_numpy()
    assert 1.5 < per_km.min() and per_km.max() < 12  # kg of fuel per km: E195-E2 .. A350
    lf = f["load_factor"].to_numpy()
    assert 0.3 < lf.mean() < 1.0 and lf.max() <= 1.0
    rev_per_pax = pc.divide(f["revenue_usd"], pc.cast(f["passengers"], pa.float64())).to_numpy()
    assert 30 < np.median(rev_per_pax) < 1500
    block_h = pc.divide(pc.cast(pc.subtract(f["arr_time_utc"], f["dep_time_utc"]), pa.int64()), 3.6e9).to_numpy()
    speed = f["distance_km"].to_numpy() / block_h
    assert 300 < speed.min() and speed.max() < 950
    # the three regions and their share of flights
    counts = dict(zip(*np.unique(fl["region"].to_numpy(zero_copy_only=False), return_counts=True)))
    assert set(counts) == {"latam", "eu", "na"}
    # cross-region routes exist
    ap = small_world.reference["airport"]
    region_of = dict(zip(ap["iata"].to_pylist(), ap["network_region"].to_pylist()))
    cross = sum(1 for a, b in zip(fl["dep_airport"].to_pylist(), fl["arr_airport"].to_pylist()) if region_of[a] != region_of[b])
    assert cross > 0
    fb = small_world.ground_truth["customer_feedback"]
    sat = fb["satisfaction_0_100"].to_numpy()
    assert sat.min() >= 0 and sat.max() <= 100 and 40 < sat.mean() < 95
    fx = small_world.reference["fx_rate"]
    brl = fx.filter(pc.equal(fx["currency"], "BRL"))["usd_per_unit"].to_numpy()
    assert 0.12 < brl.min() and brl.max() < 0.30


def test_no_loss_and_quarantined_keys_absent(small_world: World) -> None:
    q = small_world.ground_truth["quarantine_expected"]
    for contract, key in (("flight_leg", "flight_id"), ("booking", "booking_id"), ("customer_feedback", "feedback_id")):
        gt_keys = set(small_world.ground_truth[contract][key].to_pylist())
        qk = q.filter(pc.equal(q["contract"], contract))["canonical_key"].drop_null().to_pylist()
        assert qk and not (set(qk) & gt_keys)
    for name, st in small_world.stats["tables"].items():
        assert st["source_rows"] == st["ground_truth_rows"] + st["quarantined"] + st["duplicates_removed"], name
        base = st["base_records"]
        messy = st["messy"]
        # ground truth = base records minus the quarantined ones (each quarantined record is a distinct base record)
        assert st["ground_truth_rows"] == base - st["quarantined"]
        extra_rows = messy.get("duplicate", {}).get("count", 0)
        if not name.startswith("latam.voos"):
            extra_rows += messy.get("late_correction", {}).get("count", 0)
        assert st["source_rows"] == base + extra_rows, name


def test_region_dialects(small_world: World) -> None:
    latam = small_world.regions["latam"].tables["voos"]
    assert latam.schema.field("partida_local").type == pa.timestamp("us")  # local, no zone
    assert pa.types.is_decimal(latam.schema.field("combustivel_litros").type)
    eu = small_world.regions["eu"].tables["flights"]
    assert eu.schema.field("scheduled_departure").type == pa.timestamp("us", tz="UTC")
    assert set(eu["status"].unique().to_pylist()) >= {"ARRIVED", "CANCELLED"}
    objs = small_world.regions["na"].objects
    csvs = sorted(k for k in objs if k.startswith("flights/dt="))
    assert csvs and all(k.endswith("/flights.csv") for k in csvs)
    change = SMALL.schema_change.isoformat()
    for k in csvs:
        header = objs[k].split(b"\n", 1)[0].decode().split(",")
        assert ("tail_number" in header) == (k.split("dt=")[1][:10] >= change)
    line = objs[csvs[len(csvs) // 2]].split(b"\n")[1].decode()
    assert line.count("T") >= 2 and ("-0" in line or "+0" in line)  # local times with offsets
    assert any(k.startswith("feedback/dt=") and k.endswith(".jsonl") for k in objs)
    assert any(k.startswith("bookings/dt=") and k.endswith(".parquet") for k in objs)


def test_pii_is_obviously_synthetic(small_world: World) -> None:
    b = small_world.ground_truth["booking"]
    assert all(e.endswith("@example.invalid") for e in b["email"].to_pylist())
    assert all(d.startswith("SYN-") for d in b["document_number"].to_pylist())


def test_default_demo_size_stays_small() -> None:
    # 1M flights is measured in bench/bench_generator.py; `make demo` must stay well under 3 minutes
    from skyfed.cli.demo import DEFAULT_FLIGHTS

    assert DEFAULT_FLIGHTS <= 50_000

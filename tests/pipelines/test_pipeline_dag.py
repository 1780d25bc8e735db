"""Models, config blocks and the DAG (pure: files only, no services)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from skyfed.errors import SkyfedError
from skyfed.pipelines.config import parse_duration
from skyfed.pipelines.project import load_project

SHIPPED = Path(__file__).resolve().parents[2] / "examples" / "airline" / "models"


def write(folder: Path, name: str, sql: str, **config: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    block = "".join(f"{k}: {v}\n" for k, v in config.items())
    (folder / f"{name}.sql").write_text(f"/* config\n{block}*/\n{sql}\n" if config else sql + "\n")


def test_dependencies_come_from_the_sql(tmp_path) -> None:
    write(tmp_path, "a", "SELECT region, count(*) AS n FROM flight_leg GROUP BY region", tags="[core]")
    write(tmp_path, "b", "WITH x AS (SELECT * FROM a) SELECT * FROM x JOIN airport ON true", tags="[core]")
    write(tmp_path, "c", "SELECT * FROM b UNION ALL SELECT * FROM (SELECT * FROM A)", tags="[report]")
    write(tmp_path / "sub", "d", "SELECT * FROM eu.flight_leg")
    p = load_project(tmp_path)
    assert p.models["a"].depends_on == [] and p.models["a"].sources == ["flight_leg"]
    assert p.models["b"].depends_on == ["a"] and p.models["b"].sources == ["airport"]  # the CTE x is not a table
    assert p.models["c"].depends_on == ["a", "b"]
    assert p.models["d"].sources == ["eu.flight_leg"]
    assert p.order.index("a") < p.order.index("b") < p.order.index("c")
    assert p.select(selectors=["tag:core"]) == ["a", "b"]
    assert p.select(selectors=["tag:core+"]) == ["a", "b", "c"]
    assert p.select(selectors=["+c"]) == ["a", "b", "c"]
    assert p.select(["d"]) == ["d"]
    with pytest.raises(SkyfedError, match="no model has tag 'nope'"):
        p.select(selectors=["tag:nope"])
    with pytest.raises(SkyfedError, match="unknown model 'zz'"):
        p.select(["zz"])


def test_a_cycle_is_refused_and_named(tmp_path) -> None:
    write(tmp_path, "orders", "SELECT * FROM margins")
    write(tmp_path, "margins", "SELECT * FROM totals")
    write(tmp_path, "totals", "SELECT * FROM orders")
    write(tmp_path, "fine", "SELECT * FROM flight_leg")
    with pytest.raises(SkyfedError) as exc:
        load_project(tmp_path)
    msg = exc.value.message
    assert "cycle" in msg
    names = msg.split(": ", 1)[1].split(" -> ")
    assert names[0] == names[-1] and set(names) == {"orders", "margins", "totals"}, msg
    # each model reads the next one in the message
    reads = {"orders": "margins", "margins": "totals", "totals": "orders"}
    assert all(reads[a] == b for a, b in itertools.pairwise(names)), msg


def test_self_reference_is_a_cycle(tmp_path) -> None:
    write(tmp_path, "loop", "SELECT * FROM loop")
    with pytest.raises(SkyfedError, match="cycle loop -> loop"):
        load_project(tmp_path)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"materialization": "snapshot"}, "materialization"),
        ({"schedule": '"every hour"'}, "not a cron expression"),
        ({"materialization": "incremental"}, "needs unique_key"),
        ({"materialization": "incremental", "unique_key": "[k]", "time_column": "m"}, "needs time_column, period"),
        ({"materialization": "materialized_view"}, "freshness target"),
        ({"freshness": "soon", "materialization": "materialized_view"}, "not a duration"),
        ({"on_region_failure": "retry"}, "on_region_failure"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_config_is_refused_with_the_file_and_key(tmp_path, config, message) -> None:
    write(tmp_path, "m", "SELECT 1 AS x", **config)
    with pytest.raises(SkyfedError, match=message) as exc:
        load_project(tmp_path)
    assert "m.sql" in exc.value.message


def test_bad_sql_and_missing_folder(tmp_path) -> None:
    write(tmp_path, "m", "SELEC oops FROM")
    with pytest.raises(SkyfedError, match="does not parse"):
        load_project(tmp_path)
    with pytest.raises(SkyfedError, match="does not exist"):
        load_project(tmp_path / "nope")
    (tmp_path / "m.sql").write_text("/* config\n: [\n*/\nSELECT 1")
    with pytest.raises(SkyfedError, match="not valid YAML"):
        load_project(tmp_path)


def test_project_defaults_and_sql_hash(tmp_path) -> None:
    (tmp_path / "project.yaml").write_text("defaults:\n  owner: data@airline.example\n  on_region_failure: fail\n")
    write(tmp_path, "m", "SELECT region FROM flight_leg", on_region_failure="partial")
    write(tmp_path, "n", "select REGION from FLIGHT_LEG")
    p = load_project(tmp_path)
    assert p.models["m"].config.owner == "data@airline.example"
    assert p.models["m"].config.on_region_failure == "partial" and p.models["n"].config.on_region_failure == "fail"
    h = p.models["n"].sql_hash
    write(tmp_path, "n", "SELECT region   FROM flight_leg  -- same query")
    assert load_project(tmp_path).models["n"].sql_hash == h  # spelling does not matter
    write(tmp_path, "n", "SELECT region FROM flight_leg WHERE seats > 1")
    assert load_project(tmp_path).models["n"].sql_hash != h
    assert parse_duration("90m") == 5400 and parse_duration("1d") == 86400


def test_shipped_models_load() -> None:
    p = load_project(SHIPPED)
    rp = p.models["route_profitability"].config
    assert rp.materialization == "incremental" and rp.placement == "regional" and rp.period == "month"
    fe = p.models["fuel_efficiency"].config
    assert fe.materialization == "materialized_view" and fe.freshness_seconds == 6 * 3600
    assert p.models["customer_satisfaction"].config.on_region_failure == "partial"
    assert p.order[-1] == "route_scorecard"
    assert all(m.config.owner for m in p.models.values())

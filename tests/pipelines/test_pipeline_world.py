"""The shipped airline models, built through the federation, equal the metrics computed from the ground truth."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from tests.pipelines.conftest import EXAMPLE, GOVERNANCE, MODELS
from pipeline_truth import (
    ROUTE,
    assert_frames_match,
    customer_satisfaction,
    fuel_efficiency,
    route_profitability,
)

from skyfed.pipelines import state
from skyfed.pipelines.project import load_project
from skyfed.pipelines.runner import run


def _read(model: str):
    import pyarrow as pa

    cur = state.current(model)
    assert cur is not None, f"{model} was not materialized"
    return pa.concat_tables([pq.read_table(p["path"]) for p in cur["parts"].values()])


def test_airline_models_equal_ground_truth(world) -> None:
    project = load_project(MODELS)
    assert set(project.models) >= {"route_profitability", "fuel_efficiency", "customer_satisfaction", "route_scorecard"}
    assert project.models["route_scorecard"].depends_on == ["customer_satisfaction", "route_profitability"]
    out = run(world.spec, project, governance=GOVERNANCE)  # governed: the builds read as the default role
    assert out["ok"], [(r["model"], r["detail"]) for r in out["results"]]
    by = {r["model"]: r for r in out["results"]}
    assert all(by[m]["status"] == "ok" for m in by), by
    assert by["route_profitability"]["detail"]["parts"]["eu"]["role"] == "anonymous"

    assert_frames_match(_read("route_profitability"), route_profitability(world.truth_dir), ROUTE,
                        ["flights", "revenue_usd", "cost_usd", "margin_usd"])  # fmt: skip
    keys = ["region", "aircraft_type", "dep_airport", "arr_airport", "month"]
    assert_frames_match(_read("fuel_efficiency"), fuel_efficiency(world.truth_dir), keys,
                        ["fuel_kg", "rpk", "ask", "fuel_kg_per_100_rpk", "fuel_kg_per_ask"])  # fmt: skip
    assert_frames_match(_read("customer_satisfaction"), customer_satisfaction(world.truth_dir), ROUTE,
                        ["responses", "satisfaction_0_100", "nps_responses", "nps", "csat_0_100"])  # fmt: skip
    # regional models ship one part per region (only each region's aggregate left it)
    assert set(state.current("route_profitability")["parts"]) == {"latam", "eu", "na"}
    assert set(state.current("customer_satisfaction")["parts"]) == {"all"}
    # the scorecard is built from the two models in the local warehouse
    score = _read("route_scorecard")
    assert score.num_rows == _read("route_profitability").num_rows

    again = run(world.spec, project)
    assert {r["status"] for r in again["results"]} == {"skipped"}, [(r["model"], r["status"]) for r in again["results"]]


def test_models_read_as_their_role(world, tmp_path, monkeypatch) -> None:
    """Masks and row filters of the model's role apply inside the build's regional SQL; residency too."""
    import polars as pl

    from skyfed.catalog import audit as store

    models = tmp_path / "models"
    models.mkdir()
    sql = "SELECT booking_id, region, email, phone, passenger_name FROM booking"
    # regional: each part is built inside its region, where row-level PII may stay (masked by the role)
    (models / "contacts_analyst.sql").write_text(f"/* config\nrole: analyst\nplacement: regional\n*/\n{sql}\n")
    (models / "contacts_support.sql").write_text(f"/* config\nrole: support_eu\nplacement: regional\n*/\n{sql}\n")
    (models / "contacts_default.sql").write_text(f"{sql}\n")  # global, the default role: classified columns NULL
    # global with restricted raw values: they would leave their regions, so the residency policy refuses it
    (models / "contacts_global.sql").write_text(f"/* config\nrole: analyst\n*/\n{sql}\n")
    monkeypatch.setenv("SKYFED_MASK_SALT", "pipelines-test-salt")
    out = run(world.spec, load_project(models), governance=GOVERNANCE)
    by = {r["model"]: r for r in out["results"]}
    refused = by.pop("contacts_global")
    assert refused["status"] == "failed" and "residency" in refused["detail"]["error"], refused
    assert state.current("contacts_global") is None
    assert {r["status"] for r in by.values()} == {"ok"}, by
    truth = pl.read_parquet(world.truth_dir / "booking.parquet").sort("booking_id")

    analyst = pl.from_arrow(_read("contacts_analyst")).sort("booking_id")
    assert analyst["booking_id"].to_list() == truth["booking_id"].to_list()
    assert analyst["email"].null_count() == 0 and not set(analyst["email"]) & set(truth["email"]), "emails must be hashed"
    assert analyst["email"].n_unique() == truth["email"].n_unique()  # a salted hash: same email, same value
    assert analyst["passenger_name"].n_unique() == 1 and not set(analyst["passenger_name"]) & set(truth["passenger_name"])
    assert [a[-4:] for a in analyst["phone"].drop_nulls()] == [t[-4:] for t in truth["phone"].drop_nulls()]
    assert not set(analyst["phone"]) & set(truth["phone"]), "phones must be partial"

    support = pl.from_arrow(_read("contacts_support")).sort("booking_id")
    eu = truth.filter(pl.col("region") == "eu")
    assert support["booking_id"].to_list() == eu["booking_id"].to_list(), "support_eu sees European rows only"
    assert support["email"].to_list() == eu["email"].to_list(), "support_eu reads emails in clear"

    default = pl.from_arrow(_read("contacts_default"))
    assert default.height == truth.height and default["email"].null_count() == default.height  # anonymous: NULL

    events = [e for e in store.search(kind="run", limit=200) if (e["detail"] or {}).get("run_id", "").startswith(out["run_id"])]
    roles = {e["detail"]["model"]: e["detail"]["role"] for e in events}
    assert roles == {"contacts_analyst": "analyst", "contacts_support": "support_eu", "contacts_default": "anonymous",
                     "contacts_global": "analyst"}
    assert {e["status"] for e in events if e["detail"]["model"] == "contacts_global"} == {"failed"}


def test_unknown_role_fails_the_model(world, tmp_path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.sql").write_text("/* config\nrole: nobody\n*/\nSELECT region, count(*) AS n FROM flight_leg GROUP BY region\n")
    out = run(world.spec, load_project(models), governance=GOVERNANCE)
    row = out["results"][0]
    assert not out["ok"] and row["status"] == "failed" and "nobody" in row["detail"]["error"], row


# --------------------------------------------------------------------------- serving, report, shell


def test_fresh_materialized_view_answers_the_query(world) -> None:
    from skyfed.pipelines.serve import Server
    from skyfed.query import connect

    project = load_project(MODELS)
    fed = connect(world.spec, cache=False)
    clock_now = [__import__("time").time()]
    server = Server(project, fed, clock=lambda: clock_now[0])
    sql = project.models["fuel_efficiency"].sql
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    respelled = " ".join(body.split()).lower().replace("select", "SELECT", 1) + " ORDER BY fuel_kg DESC LIMIT 5"
    served = server.answer(respelled)
    assert served is not None, "the fresh materialized view should answer its own query"
    assert served.report["served_from"] == "materialization" and served.report["regions_contacted"] == 0
    live = fed.query(sql + " ORDER BY fuel_kg DESC LIMIT 5").arrow()
    assert served.arrow().column("fuel_kg").to_pylist() == live.column("fuel_kg").to_pylist()
    assert served.df().shape[0] == 5 and served.pl().height == 5
    # a different query, an ORDER BY on an expression, or a table model (no freshness target) is not answered
    assert server.answer(sql.replace("<> 'cancelled'", "= 'cancelled'")) is None
    assert server.answer(sql + " ORDER BY sum(fuel_kg)") is None
    assert server.answer(project.models["customer_satisfaction"].sql) is None
    # past its freshness target (6 h) it is no longer used...
    clock_now[0] += 7 * 3600
    assert server.answer(sql) is None
    # ...unless the federation cannot answer: then the last good one, flagged stale with its age
    broken = world.spec.model_copy(deep=True)
    broken.regions["eu"].store.endpoint = "http://127.0.0.1:9"
    # (governed as the models were built: the anonymous role; another role is never served a materialization)
    stale = Server(project, connect(broken, governance=GOVERNANCE, cache=False, timeout=4),
                   clock=lambda: clock_now[0]).query(sql)  # fmt: skip
    assert stale.stale and stale.report["age_seconds"] >= 7 * 3600 and "eu" in stale.report["stale_reason"]
    assert stale.arrow().num_rows == _read("fuel_efficiency").num_rows


def _dashboard(project) -> str:
    return project.models["fuel_efficiency"].sql + "\nORDER BY fuel_kg DESC LIMIT 5"


def test_federation_answers_from_a_fresh_materialization(world) -> None:
    """The planner hook: Federation.query itself answers from the materialized view, as the role it was built as."""
    import time

    from skyfed.errors import SkyfedError
    from skyfed.pipelines.serve import attach, connect
    from skyfed.query import connect as query_connect

    project = load_project(MODELS)
    sql = _dashboard(project)
    # the example spec path: models/ beside it is attached, the governance file beside it makes the caller
    # `anonymous`, the role the models were built as (test_airline_models_equal_ground_truth)
    fed = connect(str(EXAMPLE), cache=False)
    assert len(fed.answerers) == 1
    got = fed.query(sql)
    cur = state.current("fuel_efficiency")
    assert got.report.strategy == "materialization" and got.report.regions == [] and got.report.bytes_shipped == 0
    assert got.report.cache["model"] == "fuel_efficiency" and got.report.cache["build_id"] == cur["build_id"]
    assert 0 <= got.report.cache["age_seconds"] < 6 * 3600 and not got.stale and got.report.cache["role"] == "anonymous"
    live = fed.query(sql, use_cache=False)  # use_cache=False (as model builds do) always computes live
    assert live.report.strategy != "materialization" and {r.region for r in live.report.regions} == {"latam", "eu", "na"}
    assert got.arrow().column("fuel_kg").to_pylist() == live.arrow().column("fuel_kg").to_pylist()
    assert got.arrow().column_names == live.arrow().column_names
    assert not connect(str(EXAMPLE), cache=False, materializations=False).answerers
    with pytest.raises(SkyfedError, match="query refused"):  # the guard still runs before any answerer
        fed.query("DELETE FROM flight_leg")
    # another role (other masks and row filters), or an ungoverned caller, is answered live
    for other in (query_connect(str(EXAMPLE), role="analyst", cache=False), query_connect(world.spec, cache=False)):
        attach(other, project)
        res = other.query(sql)
        assert res.report.strategy != "materialization" and res.report.regions, res.report.cache
    # past the view's freshness target (6 h) the federation answers
    later = query_connect(str(EXAMPLE), cache=False)
    attach(later, project, clock=lambda: time.time() + 7 * 3600)
    res = later.query(sql)
    assert res.report.strategy != "materialization" and len(res.report.regions) == 3
    assert res.arrow().column("fuel_kg").to_pylist() == got.arrow().column("fuel_kg").to_pylist()


def test_federation_serves_the_last_good_materialization_when_a_region_is_down(world) -> None:
    import time

    from skyfed.errors import SkyfedError
    from skyfed.pipelines.serve import attach
    from skyfed.query import connect

    project = load_project(MODELS)
    sql = _dashboard(project)
    broken = _broken_eu(world)
    stored = _read("fuel_efficiency")

    def fed(role: str | None = None, hours: float = 0.0):
        f = connect(broken, governance=GOVERNANCE, role=role, cache=False, timeout=4)
        attach(f, project, clock=lambda: time.time() + hours * 3600)
        return f

    fresh = fed().query(sql)  # fresh: no region is contacted at all, so eu being down does not matter
    assert fresh.report.strategy == "materialization" and not fresh.stale
    old = fed(hours=7).query(sql)  # too old to answer first; the live answer fails in eu; the last good one is served
    assert old.stale and old.report.strategy == "materialization"
    assert old.report.cache["age_seconds"] >= 7 * 3600 and "region eu" in old.report.cache["stale_reason"]
    assert old.arrow().num_rows == min(5, stored.num_rows)
    assert old.arrow().column("fuel_kg").to_pylist() == sorted(stored.column("fuel_kg").to_pylist(), reverse=True)[:5]
    partial = fed(hours=7).query(sql, allow_partial=True)  # asked for a partial answer: that is what it gets
    assert partial.partial and not partial.stale and [m["region"] for m in partial.missing] == ["eu"]
    with pytest.raises(SkyfedError, match="region eu"):  # no materialization answers this one
        fed(hours=7).query("SELECT region, count(*) AS n FROM flight_leg GROUP BY region")
    with pytest.raises(SkyfedError, match="region eu"):  # nor another role's query
        fed(role="analyst", hours=7).query(sql)


def test_report_and_summary(world, tmp_path) -> None:
    import io

    import polars as pl
    from rich.console import Console

    from skyfed.pipelines.report import print_summary, write_report

    path = write_report(tmp_path / "r.html")
    page = path.read_text()
    assert page.count('class="plotly-graph-div"') == 5 and "Plotly.newPlot" in page
    assert "<script src=" not in page  # self-contained: plotly.js inlined
    buf = io.StringIO()
    data = print_summary(3, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "Top 3 routes by margin" in text and "Fuel efficiency by aircraft type" in text
    # the numbers equal the ground truth's
    truth = route_profitability(world.truth_dir).group_by("region", "dep_airport", "arr_airport").agg(
        pl.col("margin_usd").sum()).sort("margin_usd", descending=True)  # fmt: skip
    top = data["top_routes"][0]
    assert top["route"] == f"{truth['dep_airport'][0]}-{truth['arr_airport'][0]}"
    assert abs(top["margin_usd"] - truth["margin_usd"][0]) < 1e-6 * abs(truth["margin_usd"][0])
    fuel = fuel_efficiency(world.truth_dir).group_by("aircraft_type").agg(pl.col("fuel_kg").sum(), pl.col("rpk").sum())
    fuel = fuel.with_columns((100 * pl.col("fuel_kg") / pl.col("rpk")).alias("v")).sort("v")
    assert [r["aircraft_type"] for r in data["fuel_by_aircraft_type"]] == fuel["aircraft_type"].to_list()
    sat = customer_satisfaction(world.truth_dir).group_by("region").agg(
        (pl.col("satisfaction_0_100") * pl.col("responses")).sum() / pl.col("responses").sum()).sort("region")  # fmt: skip
    got = {r["region"]: r["satisfaction_0_100"] for r in data["satisfaction_by_region"]}
    for region, value in sat.rows():
        assert abs(got[region] - value) < 1e-9


def test_shell_core(world) -> None:
    from skyfed.pipelines.shell import ShellCore
    from skyfed.query import connect

    core = ShellCore(connect(world.spec, cache=False), load_project(MODELS))
    names = core.completions()
    assert {"flight_leg", "eu.flight_leg", "route_profitability", "margin_usd", "dep_time_utc", ".tables"} <= set(names)
    assert "eu.flight_leg" in core.handle(".tables").text.splitlines()
    assert "margin_pct" in core.handle(".columns route_profitability").text
    reply = core.handle("SELECT region, count(*) AS n FROM flight_leg GROUP BY region ORDER BY region;")
    assert [r["region"] for r in reply.table.to_pylist()] == ["eu", "latam", "na"]
    assert "3 rows" in reply.text and "partial_aggregate" in reply.text and "B shipped" in reply.text
    reply = core.handle("SELECT region, sum(margin_usd) AS m FROM route_profitability GROUP BY ALL ORDER BY 1")
    assert reply.table.num_rows == 3 and "local warehouse" in reply.text
    assert core.handle(".report off").text == "report off"
    assert "shipped" not in core.handle("SELECT count(*) AS n FROM eu.flight_leg").text
    bad = core.handle("SELECT nope FROM flight_leg")
    assert bad.error and bad.text.startswith("error:")
    assert core.handle(".frobnicate").error and core.handle(".quit").quit


def test_shell_prompt_history_and_completion(world, tmp_path) -> None:
    from prompt_toolkit.application import create_app_session
    from prompt_toolkit.document import Document
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from skyfed.pipelines.shell import ShellCore, completer, repl
    from skyfed.query import connect

    core = ShellCore(connect(world.spec, cache=False), load_project(MODELS))
    comp = completer(core)
    words = lambda text: {c.text for c in comp.get_completions(Document(text), None)}
    assert "flight_leg" in words("SELECT * FROM fli")
    assert "eu.flight_leg" in words("SELECT * FROM eu.fl")
    assert {"margin_usd", "margin_pct"} <= words("SELECT marg")
    history = tmp_path / "history"
    printed: list[str] = []
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        pipe.send_text("SELECT count(*) AS n FROM eu.flight_leg\r.quit\r")
        repl(core, str(history), write=printed.append, input=pipe, output=DummyOutput())
    assert "1 rows" in printed[0] and printed[-1] == "bye"
    assert "SELECT count(*) AS n FROM eu.flight_leg" in history.read_text()


def test_view_models_are_inlined(world, tmp_path) -> None:
    """A view stores nothing; reading it (shell, or another model) runs its SQL in place."""
    from skyfed.pipelines.shell import ShellCore
    from skyfed.query import connect

    models = tmp_path / "models"
    models.mkdir()
    (models / "busy_legs.sql").write_text("/* config\nmaterialization: view\n*/\nSELECT region, seats FROM flight_leg WHERE seats > 150\n")
    (models / "busy_by_region.sql").write_text("SELECT region, count(*) AS n FROM busy_legs GROUP BY region\n")
    project = load_project(models)
    assert project.models["busy_by_region"].depends_on == ["busy_legs"]
    out = run(world.spec, project)
    assert out["ok"] and [r["action"] for r in out["results"]] == ["view", "full"]
    fed = connect(world.spec, cache=False)
    want = fed.query("SELECT region, count(*) AS n FROM flight_leg WHERE seats > 150 GROUP BY region ORDER BY region").arrow()
    got = ShellCore(fed, project).handle("SELECT region, count(*) AS n FROM busy_legs GROUP BY region ORDER BY region").table
    assert got.to_pylist() == want.to_pylist()
    assert sorted(_read("busy_by_region").to_pylist(), key=lambda r: r["region"]) == want.to_pylist()


# --------------------------------------------------------------------------- fallbacks when a region is down


def _broken_eu(world):
    spec = world.spec.model_copy(deep=True)
    spec.regions["eu"].store.endpoint = "http://127.0.0.1:9"  # nothing listens on the discard port
    return spec


def _project_with(tmp_path, **overrides):
    """A copy of the shipped models with config keys replaced (e.g. on_region_failure per model)."""
    import re
    import shutil

    dst = tmp_path / "models"
    shutil.copytree(MODELS, dst)
    for model, repl in overrides.items():
        p = dst / f"{model}.sql"
        text = p.read_text()
        for key, value in repl.items():
            text, n = re.subn(rf"^{key}: .*$", f"{key}: {value}", text, count=1, flags=re.MULTILINE)
            if n == 0:
                text = text.replace("/* config\n", f"/* config\n{key}: {value}\n", 1)
        p.write_text(text)
    return load_project(dst)


def test_region_down_stale_partial_fail(world, tmp_path) -> None:
    from skyfed.query import connect

    project = _project_with(tmp_path, customer_satisfaction={"on_region_failure": "stale"})
    good = run(world.spec, project, ["route_profitability", "customer_satisfaction"], full_refresh=True)
    assert good["ok"]
    before_rp = state.current("route_profitability")
    before_cs = state.current("customer_satisfaction")
    broken = _broken_eu(world)
    fed = connect(broken, cache=False, timeout=2)

    # stale (regional): latam and na rebuilt, eu's last good part kept and flagged with its age
    out = run(broken, project, ["route_profitability", "customer_satisfaction"], full_refresh=True, fed=fed)
    by = {r["model"]: r for r in out["results"]}
    rp = by["route_profitability"]
    assert rp["status"] == "stale", rp
    assert rp["detail"]["parts"]["eu"]["action"] == "stale" and rp["detail"]["stale_age_seconds"] >= 0
    assert "eu" in rp["detail"]["parts"]["eu"]["missing"][0]["region"]
    now_rp = state.current("route_profitability")
    assert now_rp["parts"]["eu"]["path"] == before_rp["parts"]["eu"]["path"] and now_rp["parts"]["eu"]["stale"]
    assert now_rp["parts"]["latam"]["path"] != before_rp["parts"]["latam"]["path"]
    assert_frames_match(_read("route_profitability"), route_profitability(world.truth_dir), ROUTE, ["revenue_usd", "cost_usd"])
    # stale (global): the whole last good materialization stays current
    cs = by["customer_satisfaction"]
    assert cs["status"] == "stale" and cs["detail"]["stale_age_seconds"] >= 0
    assert state.current("customer_satisfaction")["parts"]["all"]["path"] == before_cs["parts"]["all"]["path"]

    # partial: built without eu, flagged
    project = _project_with(tmp_path / "p", customer_satisfaction={"on_region_failure": "partial"},
                            route_profitability={"on_region_failure": "partial"})  # fmt: skip
    out = run(broken, project, ["route_profitability", "customer_satisfaction"], full_refresh=True, fed=fed)
    by = {r["model"]: r for r in out["results"]}
    assert {r["status"] for r in out["results"]} == {"partial"}, by
    assert set(state.current("route_profitability")["parts"]) == {"latam", "na"}
    regions = set(_read("customer_satisfaction")["region"].to_pylist())
    assert regions == {"latam", "na"}
    assert state.current("customer_satisfaction")["parts"]["all"]["missing"] == ["eu"]

    # fail: the run fails naming eu, the materialization in place is untouched
    project = _project_with(tmp_path / "f", customer_satisfaction={"on_region_failure": "fail"})
    keep = state.current("customer_satisfaction")
    out = run(broken, project, ["customer_satisfaction", "route_scorecard"], full_refresh=True, fed=fed)
    by = {r["model"]: r for r in out["results"]}
    assert by["customer_satisfaction"]["status"] == "failed" and "eu" in by["customer_satisfaction"]["detail"]["error"]
    assert by["route_scorecard"]["status"] == "upstream_failed"
    assert state.current("customer_satisfaction")["build_id"] == keep["build_id"]

    # the region is back: everything is rebuilt and equals the ground truth again
    out = run(world.spec, load_project(MODELS), full_refresh=True)
    assert out["ok"]
    assert_frames_match(_read("customer_satisfaction"), customer_satisfaction(world.truth_dir), ROUTE, ["responses", "nps"])
    recorded = state.runs(model="customer_satisfaction", limit=50)
    assert {"stale", "partial", "failed", "ok"} <= {r["status"] for r in recorded}


# --------------------------------------------------------------------------- incremental = full rebuild


def _change_latam_source(world) -> None:
    """New legs in the last weeks, and a changed revenue in January (outside the lookback window)."""
    from skyfed.demo.writers.postgres import connect as pg_connect
    from skyfed.demo.writers.settings import pg_settings

    with pg_connect(pg_settings(world.spec)) as conn:
        cols = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'voos' ORDER BY ordinal_position")]
        rest = ", ".join(f'"{c}"' for c in cols if c not in ("id", "atualizado_em"))
        conn.execute(f"INSERT INTO voos (id, {rest}, atualizado_em) SELECT id + 1000000, {rest}, now() FROM voos "
                     "WHERE partida_local >= (SELECT max(partida_local) - interval '10 days' FROM voos)")
        conn.execute("UPDATE voos SET receita_brl = receita_brl * 3, atualizado_em = now() "
                     "WHERE id IN (SELECT id FROM voos WHERE partida_local < '2024-01-20' ORDER BY id LIMIT 5)")
        conn.commit()


def _sorted(table, keys):
    import polars as pl

    return pl.from_arrow(table).sort(keys)


def test_incremental_and_backfill_equal_full_rebuild(world, tmp_path) -> None:
    from skyfed.ingest.batch import ingest
    from skyfed.query import connect

    models = tmp_path / "models"
    models.mkdir()
    (models / "leg_revenue.sql").write_text(
        "/* config\nmaterialization: incremental\nunique_key: [flight_id]\nupdated_column: updated_at_utc\n*/\n"
        "SELECT flight_id, region, revenue_usd, updated_at_utc FROM flight_leg\n")  # fmt: skip
    import shutil

    shutil.copy(MODELS / "route_profitability.sql", models)
    project = load_project(models)
    assert run(world.spec, project, full_refresh=True)["ok"]
    before = _read("leg_revenue").num_rows

    _change_latam_source(world)
    _, _, failures = ingest(world.spec)
    assert failures == []

    out = run(world.spec, project)
    by = {r["model"]: r for r in out["results"]}
    assert out["ok"], by
    rp = by["route_profitability"]
    assert rp["action"] == "incremental"
    assert rp["detail"]["parts"]["eu"]["action"] == "keep" and rp["detail"]["parts"]["na"]["action"] == "keep"
    start = rp["detail"]["parts"]["latam"]["range"][0]
    assert start >= "2024-03-01", start  # from the last month (April) minus one, not the whole history
    leg = by["leg_revenue"]
    assert leg["action"] == "incremental" and "watermark" in leg["detail"]["parts"]["all"]

    fed = connect(world.spec, cache=False)
    full_rp = fed.query(project.models["route_profitability"].sql).arrow()
    full_leg = fed.query(project.models["leg_revenue"].sql).arrow()
    # key-based incremental: exactly the full rebuild
    assert _read("leg_revenue").num_rows > before
    assert _sorted(_read("leg_revenue"), ["flight_id"]).equals(_sorted(full_leg, ["flight_id"]))
    # time-range incremental: equal from the recomputed range on; January (changed outside the window) is not
    got, want = _sorted(_read("route_profitability"), ROUTE), _sorted(full_rp, ROUTE)
    import polars as pl

    since = pl.lit(start[:10]).str.to_date()
    assert got.filter(pl.col("month") >= since).equals(want.filter(pl.col("month") >= since))
    assert not got.equals(want), "the January change should not be seen by an incremental run"

    # backfill January: now equal to the full rebuild everywhere
    from skyfed.pipelines.runner import backfill

    out = backfill(world.spec, project, "route_profitability", "2024-01-05", "2024-01-31")
    row = out["results"][0]
    assert row["action"] == "backfill" and row["detail"]["parts"]["latam"]["range"][0].startswith("2024-01-01")
    assert _sorted(_read("route_profitability"), ROUTE).equals(want)
    # and a full refresh gives the same table
    assert run(world.spec, project, ["route_profitability"], full_refresh=True)["results"][0]["action"] == "full"
    assert _sorted(_read("route_profitability"), ROUTE).equals(want)


# --------------------------------------------------------------------------- crashes


def test_a_crash_never_leaves_a_half_build(world, run_cli) -> None:
    """kill -9 after a part is written (before the commit) and right after the commit: the materialization
    is always one whole build, and the next run completes it."""
    from skyfed.pipelines import warehouse

    spec = str(EXAMPLE)
    assert run(world.spec, load_project(MODELS), ["route_profitability"], full_refresh=True)["ok"]
    before = state.current("route_profitability")
    before_rows = _sorted(_read("route_profitability"), ROUTE)
    res = run_cli("run", "route_profitability", "--full-refresh", "--parallel", "1", "--spec", spec,
                  env={"SKYFED_STORE_CRASH_AT": "pipelines.part_written"})  # fmt: skip
    assert res.code == -9, (res.code, res.stderr)
    assert state.current("route_profitability")["build_id"] == before["build_id"]
    assert _sorted(_read("route_profitability"), ROUTE).equals(before_rows)
    res = run_cli("run", "route_profitability", "--full-refresh", "--spec", spec,
                  env={"SKYFED_STORE_CRASH_AT": "pipelines.committed"})  # fmt: skip
    assert res.code == -9, (res.code, res.stderr)
    after = state.current("route_profitability")
    assert after["build_id"] != before["build_id"]
    assert _sorted(_read("route_profitability"), ROUTE).equals(before_rows)
    assert run(world.spec, load_project(MODELS), ["route_profitability"], full_refresh=True)["ok"]
    assert _sorted(_read("route_profitability"), ROUTE).equals(before_rows)  # same inputs, same table
    folders = {p.name for p in (warehouse.root() / "route_profitability").iterdir()}
    assert folders == {state.current("route_profitability")["build_id"]}, "orphaned builds are removed"


# --------------------------------------------------------------------------- the CLI


def _names(node: dict) -> set[str]:
    return {node["name"]} | {n for c in node["children"] for n in _names(c)}


def test_cli_run_lineage_audit_report_shell_backfill(world, cli, tmp_path) -> None:
    import json

    spec = str(EXAMPLE)
    code, stdout, stderr = cli("run", "--select", "+route_scorecard", "--spec", spec, "--json", "--full-refresh")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert [r["model"] for r in data["results"]][-1] == "route_scorecard"
    assert {r["status"] for r in data["results"]} <= {"ok", "skipped"}
    # lineage: a model column goes back to the canonical columns, the regions' tables and the sources
    code, stdout, stderr = cli("lineage", "route_profitability.margin_usd", "--upstream", "--spec", spec, "--json")
    assert code == 0, stderr
    names = _names(json.loads(stdout))
    assert {"flight_leg.revenue_usd", "flight_leg.cost_usd", "eu.flight_leg.revenue_usd"} <= names, names
    assert "flight_leg.fuel_kg" not in names
    assert any(n.startswith("latam.") and n.count(".") == 3 for n in names), names  # a source column
    code, stdout, stderr = cli("lineage", "route_scorecard", "--upstream", "--spec", spec, "--json")
    assert code == 0 and {"route_profitability", "customer_satisfaction"} <= _names(json.loads(stdout))
    # audit: every build of the run, with what it read and wrote
    code, stdout, stderr = cli("audit", "--kind", "run", "--json", "--limit", "500")
    assert code == 0, stderr
    builds = {e["detail"]["model"]: e for e in json.loads(stdout)
              if e["detail"].get("run_kind") == "model" and e["detail"]["run_id"].startswith(data["run_id"])}  # fmt: skip
    assert set(builds) == {r["model"] for r in data["results"]}, builds.keys()
    rp = builds["route_profitability"]
    assert {"flight_leg", "eu.flight_leg", "route_profitability"} <= set(rp["tables"]) and rp["status"] == "ok"
    assert rp["rows"] == next(r["rows"] for r in data["results"] if r["model"] == "route_profitability")
    assert builds["route_scorecard"]["detail"]["reads"] == ["customer_satisfaction", "route_profitability"]
    from skyfed.errors import SkyfedError
    from skyfed.pipelines.runner import backfill

    with pytest.raises(SkyfedError, match="cannot be backfilled"):
        backfill(world.spec, load_project(MODELS), "customer_satisfaction", "2024-01-01", "2024-02-01")
    code, stdout, stderr = cli("report", "--out", str(tmp_path / "r.html"), "--json")
    assert code == 0, stderr
    rep = json.loads(stdout)
    assert len(rep["top_routes"]) == 5 and (tmp_path / "r.html").exists()
    code, stdout, stderr = cli("shell", "--spec", spec, "-e", ".models", "-e", "SELECT count(*) AS n FROM route_scorecard")
    assert code == 0, stderr
    assert "route_scorecard: table, global" in stdout and "1 rows" in stdout
    code, stdout, stderr = cli("shell", "--spec", spec, "-e", "SELECT * FROM nowhere")
    assert code == 1 and "unknown table" in stdout


def test_cli_schedule_stops_on_sigterm(world) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "skyfed", "schedule", "--spec", str(EXAMPLE)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())  # fmt: skip
    try:
        line = proc.stderr.readline()
        deadline = time.time() + 120
        while '"event": "start"' not in line and time.time() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
        assert '"event": "start"' in line, f"the scheduler did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        assert "route_profitability" in line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert '"event": "stop"' in err and "scheduler stopped" in err

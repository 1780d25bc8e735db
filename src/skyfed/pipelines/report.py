"""`skyfed report`: the three airline metrics as a self-contained HTML page (plotly), and a text summary.

Both read the current materializations (never the regions), so they are instant and work
while a region is down; stale parts are named with their age. `print_summary()` is what
`make demo` prints at its end: top and bottom routes by margin, the fuel-efficiency ranking
by aircraft type and satisfaction by region.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from skyfed.errors import SkyfedError
from skyfed.home import sub_dir
from skyfed.pipelines import state, warehouse

METRIC_MODELS = ("route_profitability", "fuel_efficiency", "customer_satisfaction")


def _session() -> Any:
    current = state.all_current()
    missing = [m for m in METRIC_MODELS if m not in current]
    if missing:
        raise SkyfedError(f"model {', '.join(missing)} has no materialization yet",
                          "run `skyfed run` (after `skyfed ingest`) first")  # fmt: skip
    return warehouse.session({m: current[m] for m in METRIC_MODELS}), current


def _rows(con: Any, sql: str) -> list[dict[str, Any]]:
    return con.execute(sql).to_arrow_table().to_pylist()


SQL = {
    "routes": """
        SELECT region, dep_airport || '-' || arr_airport AS route, CAST(sum(flights) AS BIGINT) AS flights,
               sum(revenue_usd) AS revenue_usd, sum(cost_usd) AS cost_usd, sum(margin_usd) AS margin_usd,
               sum(margin_usd) / nullif(sum(revenue_usd), 0) AS margin_pct
        FROM route_profitability GROUP BY ALL""",
    "fuel_by_type": """
        SELECT aircraft_type, CAST(sum(flights) AS BIGINT) AS flights, 100 * sum(fuel_kg) / nullif(sum(rpk), 0) AS fuel_kg_per_100_rpk,
               sum(fuel_kg) / nullif(sum(ask), 0) AS fuel_kg_per_ask
        FROM fuel_efficiency GROUP BY ALL ORDER BY fuel_kg_per_100_rpk""",
    "satisfaction_by_region": """
        SELECT region, CAST(sum(responses) AS BIGINT) AS responses,
               sum(satisfaction_0_100 * responses) / sum(responses) AS satisfaction_0_100,
               sum(nps * nps_responses) / nullif(sum(nps_responses), 0) AS nps,
               sum(csat_0_100 * csat_responses) / nullif(sum(csat_responses), 0) AS csat_0_100
        FROM customer_satisfaction GROUP BY ALL ORDER BY region""",
    "margin_monthly": """
        SELECT region, month, sum(margin_usd) AS margin_usd, sum(margin_usd) / nullif(sum(revenue_usd), 0) AS margin_pct
        FROM route_profitability GROUP BY ALL ORDER BY region, month""",
    "fuel_monthly": """
        SELECT region, month, 100 * sum(fuel_kg) / nullif(sum(rpk), 0) AS fuel_kg_per_100_rpk,
               sum(fuel_kg) / nullif(sum(ask), 0) AS fuel_kg_per_ask
        FROM fuel_efficiency GROUP BY ALL ORDER BY region, month""",
    "satisfaction_monthly": """
        SELECT region, month, sum(satisfaction_0_100 * responses) / sum(responses) AS satisfaction_0_100,
               sum(nps * nps_responses) / nullif(sum(nps_responses), 0) AS nps
        FROM customer_satisfaction GROUP BY ALL ORDER BY region, month""",
}


def freshness(current: dict[str, Any], now: float | None = None) -> list[dict[str, Any]]:
    """Per metric model and part: when it was built and whether it is a stale fallback."""
    now = time.time() if now is None else now
    out = []
    for m in METRIC_MODELS:
        for part, p in sorted(current[m]["parts"].items()):
            out.append({"model": m, "part": part, "rows": p.get("rows"), "age_seconds": round(now - float(p["built_at"]), 1),
                        "stale": bool(p.get("stale")), "missing": p.get("missing") or []})  # fmt: skip
    return out


def summary(n: int = 5) -> dict[str, Any]:
    """Top/bottom routes by margin, fuel efficiency ranking, satisfaction by region (plain data)."""
    con, current = _session()
    try:
        routes = SQL["routes"]
        return {
            "top_routes": _rows(con, f"{routes} ORDER BY margin_usd DESC, route LIMIT {int(n)}"),
            "bottom_routes": _rows(con, f"{routes} ORDER BY margin_usd ASC, route LIMIT {int(n)}"),
            "fuel_by_aircraft_type": _rows(con, SQL["fuel_by_type"]),
            "satisfaction_by_region": _rows(con, SQL["satisfaction_by_region"]),
            "freshness": freshness(current),
        }
    finally:
        con.close()


def print_summary(n: int = 5, console: Any = None) -> dict[str, Any]:
    """Print the end-of-demo summary (rich tables) and return it. `make demo` calls this."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    data = summary(n)

    def table(title: str, rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> None:
        t = Table(title=title, title_justify="left")
        for key, _ in cols:
            t.add_column(key, justify="left" if key in ("region", "route", "aircraft_type") else "right")
        for r in rows:
            t.add_row(*("-" if r.get(k) is None else format(r[k], f) for k, f in cols))
        console.print(t)

    money = [("region", ""), ("route", ""), ("flights", ",d"), ("revenue_usd", ",.0f"), ("cost_usd", ",.0f"),
             ("margin_usd", ",.0f"), ("margin_pct", ".1%")]  # fmt: skip
    table(f"Top {n} routes by margin (USD)", data["top_routes"], money)
    table(f"Bottom {n} routes by margin (USD)", data["bottom_routes"], money)
    table("Fuel efficiency by aircraft type (best first)", data["fuel_by_aircraft_type"],
          [("aircraft_type", ""), ("flights", ",d"), ("fuel_kg_per_100_rpk", ".2f"), ("fuel_kg_per_ask", ".4f")])
    table("Customer satisfaction by region (0-100; NPS -100..100)", data["satisfaction_by_region"],
          [("region", ""), ("responses", ",d"), ("satisfaction_0_100", ".1f"), ("nps", ".1f"), ("csat_0_100", ".1f")])
    for f in data["freshness"]:
        if f["stale"] or f["missing"]:
            what = "stale fallback" if f["stale"] else f"missing {', '.join(f['missing'])}"
            console.print(f"[yellow]{f['model']} ({f['part']}): {what}, built {f['age_seconds']:.0f} s ago[/]")
    return data


def write_report(path: str | Path | None = None) -> Path:
    """Write the HTML report (plotly.js inlined: one file, opens offline) and return its path."""
    import plotly.express as px

    con, _ = _session()
    try:
        frames = {k: con.execute(SQL[k]).df() for k in ("margin_monthly", "fuel_monthly", "satisfaction_monthly")}
        data = summary(10)
    finally:
        con.close()
    figs = [
        px.line(frames["margin_monthly"], x="month", y="margin_usd", color="region", markers=True,
                title="Route profitability: margin (USD) by region and month"),
        px.line(frames["margin_monthly"], x="month", y="margin_pct", color="region", markers=True,
                title="Margin as a share of revenue by region and month"),
        px.line(frames["fuel_monthly"], x="month", y="fuel_kg_per_100_rpk", color="region", markers=True,
                title="Fuel efficiency: kg fuel per 100 revenue passenger-km by region and month"),
        px.line(frames["fuel_monthly"], x="month", y="fuel_kg_per_ask", color="region", markers=True,
                title="Fuel efficiency: kg fuel per available seat-km by region and month"),
        px.line(frames["satisfaction_monthly"], x="month", y="satisfaction_0_100", color="region", markers=True,
                title="Customer satisfaction (NPS and CSAT harmonized to 0-100) by region and month"),
    ]  # fmt: skip
    parts = [f.to_html(full_html=False, include_plotlyjs=("inline" if i == 0 else False)) for i, f in enumerate(figs)]
    fresh = "".join(
        f"<tr><td>{html.escape(f['model'])}</td><td>{html.escape(f['part'])}</td><td>{f['rows']}</td>"
        f"<td>{f['age_seconds']:.0f} s</td><td>{'STALE fallback' if f['stale'] else ''}"
        f"{' missing ' + ', '.join(f['missing']) if f['missing'] else ''}</td></tr>"
        for f in data["freshness"]
    )
    rank = "".join(f"<tr><td>{html.escape(r['aircraft_type'])}</td><td>{r['fuel_kg_per_100_rpk']:.2f}</td>"
                   f"<td>{r['fuel_kg_per_ask']:.4f}</td></tr>" for r in data["fuel_by_aircraft_type"])  # fmt: skip
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>skyfed airline report</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px}}</style>
</head><body><h1>Airline metrics</h1>
<p>From the current materializations of {', '.join(METRIC_MODELS)} (built by <code>skyfed run</code>).</p>
{''.join(parts)}
<h2>Fuel efficiency ranking by aircraft type</h2><table><tr><th>aircraft type</th><th>kg / 100 RPK</th><th>kg / ASK</th></tr>{rank}</table>
<h2>Freshness</h2><table><tr><th>model</th><th>part</th><th>rows</th><th>age</th><th>flag</th></tr>{fresh}</table>
</body></html>"""
    out = Path(path) if path else sub_dir("reports") / "airline.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(page)
    tmp.replace(out)
    return out

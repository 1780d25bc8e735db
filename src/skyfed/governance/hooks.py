"""The small functions other layers call: one line at each call site.

- ingest, before a run:    `ensure_contracts(spec, spec_path)` (raises if the spec's contracts are refused)
- ingest, after a mapping: `after_ingest(spec, mapping_name, run_id, status, rows_loaded)`
- query, before planning:  `govern_query(sql, spec, role, spec_path, cross_region)` -> (sql, decisions)
- query, after a query:    `skyfed.governance.audit.record_query(...)`
- ingest, drift (skyfed.governance.drift): `drift = check_drift(spec, mapping, info.schema, run_id=run_id)`
  after table_info, `batch = drift.apply(batch, rejects.append)` per batch, then
  `result.warnings.update(drift.warnings); result.notes.extend(drift.notes)`
"""

from __future__ import annotations

from typing import Any

from skyfed.errors import SkyfedError
from skyfed.governance.audit import record_query, record_run
from skyfed.governance.config import governance_path, load_governance
from skyfed.governance.lineage import ingest_lineage
from skyfed.governance.policy import PolicyRefusal, apply_policies
from skyfed.governance.versioning import check_spec
from skyfed.spec.models import PlatformSpec


def ensure_contracts(spec: PlatformSpec, spec_path: str | None) -> dict[str, int]:
    """Register the spec's contracts (idempotent) and return {contract: registry version}; refuse if incompatible."""
    report = check_spec(spec, load_governance(governance_path(spec_path)), spec_path=spec_path)
    if not report.ok:
        first = next((v.message() for c in report.contracts for v in c.violations), None) or report.policy_findings[0]
        raise SkyfedError(
            f"the spec's contracts are not compatible with the registry: {first}",
            "run `skyfed contracts check` for every violation and the options",
        )
    return {c.name: int(c.version or 0) for c in report.contracts}


def after_ingest(spec: PlatformSpec, mapping_name: str, run_id: str, status: str, rows_loaded: int | None) -> str | None:
    """Emit the run's OpenLineage event and its audit record; returns a problem, never raises.

    The run's data is already committed when this is called, so a lineage endpoint that
    is down must not turn a good run into a failed one: the caller reports the problem.
    """
    try:
        ingest_lineage(spec, mapping_name, run_id, status=status)
        m = next(m for m in spec.mappings if m.name == mapping_name)
        region = m.source.split(".")[0]
        record_run(f"{run_id}:{mapping_name}", kind="ingest", tables=[f"{m.source}.{m.table}", f"{region}.{m.contract}"],
                   actor=None, rows=rows_loaded, status=status, detail={"mapping": mapping_name})
    except Exception as exc:  # noqa: BLE001 (any transport or database error is reported, not raised)
        return f"lineage/audit record not written: {type(exc).__name__}: {exc}"
    return None


def govern_query(sql: str, spec: PlatformSpec, role: str, spec_path: str | None = None,
                 cross_region: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """The query with the role's masks, row filters and residency guards; a refusal is audited and re-raised."""
    gov = load_governance(governance_path(spec_path))
    try:
        rw = apply_policies(sql, role=role, contracts=gov.classify(spec.contracts), gov=gov, cross_region=cross_region)
    except PolicyRefusal as exc:
        record_query(sql, role=role, status="refused",
                     decisions=[{"policy": exc.policy, "decision": "refused", "detail": exc.message}])
        raise
    return rw.sql, [d.to_dict() for d in rw.decisions]

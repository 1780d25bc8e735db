"""Check a spec against the contract registry and register what is compatible.

`check_spec` is the one entry point: the CLI (`skyfed contracts check`) calls it, and
so should every command that acts on a changed spec (ingest, query) before it
touches a table. Per contract it computes the canonical body (field ids carried
from the latest version, renames from the governance file), compares it with the
history under the contract's compatibility mode, and registers a new version only
when nothing is refused. Policy weakenings (a classification removed, a mask made
weaker, row access or residency loosened) are reported and refuse registration
unless accepted explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from skyfed.catalog import registry
from skyfed.errors import SkyfedError
from skyfed.governance.canonical import body_hash, canonical
from skyfed.governance.compat import OPTIONS, Violation, check_mode, diff, violations
from skyfed.governance.config import STRENGTH, Governance, governed_spec
from skyfed.spec.models import PlatformSpec

POLICY_NAME = "governance"


@dataclass
class ContractReport:
    name: str
    mode: str
    status: str  # new | unchanged | registered | refused | would_register
    version: int | None
    declared_version: int
    hash: str
    changes: list[dict[str, Any]] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "contract": self.name,
            "mode": self.mode,
            "status": self.status,
            "version": self.version,
            "declared_version": self.declared_version,
            "hash": self.hash,
            "changes": self.changes,
            "violations": [v.to_dict() for v in self.violations],
            "notes": self.notes,
        }


@dataclass
class CheckReport:
    contracts: list[ContractReport]
    policy_findings: list[str]
    policy_status: str
    options: tuple[str, ...] = OPTIONS

    @property
    def ok(self) -> bool:
        return not any(c.status == "refused" for c in self.contracts) and self.policy_status != "refused"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "contracts": [c.to_dict() for c in self.contracts],
            "policy": {"status": self.policy_status, "findings": self.policy_findings},
            "options": list(self.options) if not self.ok else [],
        }


def policy_body(gov: Governance) -> dict[str, Any]:
    """The registered form of the policies (no salt, no evolution settings)."""
    return {
        "roles": {name: role.model_dump(exclude={"description"}) for name, role in sorted(gov.roles.items())},
        "residency": gov.residency.model_dump(),
    }


def check_spec(
    spec: PlatformSpec,
    gov: Governance,
    *,
    spec_path: str | None = None,
    mode: str | None = None,
    register: bool = True,
    accept_weaker_policy: bool = False,
) -> CheckReport:
    """Compare every contract of `spec` with its registered history; register compatible ones."""
    spec = governed_spec(spec, gov)
    reports: list[ContractReport] = []
    findings: list[str] = []
    pending: list[tuple[ContractReport, dict[str, Any]]] = []
    for name, contract in spec.contracts.items():
        settings = gov.contracts.get(name)
        chosen = check_mode(mode or (settings.compatibility if settings and settings.compatibility else contract.compatibility))
        history = registry.history(name)
        latest = history[-1]["body"] if history else None
        body = canonical(contract, latest, settings.renames if settings and latest else None)
        digest = body_hash(body)
        known = next((row for row in history if row["hash"] == digest), None)
        rep = ContractReport(name, chosen, "unchanged", known["version"] if known else None, contract.version, digest)
        if known:
            if history and known["version"] != history[-1]["version"]:
                rep.notes.append(f"the spec matches version {known['version']}, older than the latest {history[-1]['version']}")
            reports.append(rep)
            continue
        if latest is not None:
            rep.changes = [{"column": c.column, "rule": c.rule, "detail": c.detail} for c in diff(latest, body)]
            findings.extend(_classification_findings(name, latest, body))
            if contract.version <= int(history[-1]["declared_version"] or 0):
                rep.notes.append(
                    f"the schema changed but the declared version stayed {contract.version}; "
                    f"bump `version:` to {int(history[-1]['declared_version'] or 0) + 1}"
                )
        rep.violations = violations(name, chosen, history, body)
        rep.status = "refused" if rep.violations else ("new" if latest is None else "changed")
        reports.append(rep)
        if not rep.violations:
            pending.append((rep, body))

    pol = policy_body(gov)
    pol_hist = registry.history(POLICY_NAME, kind="policy")
    if pol_hist and pol_hist[-1]["hash"] != body_hash(pol):
        findings.extend(policy_findings(pol_hist[-1]["body"], pol, _classifications(spec)))
    policy_status = "refused" if findings and not accept_weaker_policy else ("accepted" if findings else "ok")
    if policy_status == "refused":
        for rep, _ in pending:
            rep.status = "refused"
            rep.notes.append("not registered: the policy findings above must be accepted first")
        pending = []
    for rep, body in pending:
        if register:
            row, _ = registry.register(
                rep.name, rep.hash, body, declared_version=rep.declared_version, spec_path=spec_path, compatibility=rep.mode
            )
            rep.version, rep.status = row["version"], "registered"
        else:
            rep.status = "would_register"
    if register and policy_status != "refused":
        registry.register(POLICY_NAME, body_hash(pol), pol, kind="policy", spec_path=spec_path)
    return CheckReport(reports, findings, policy_status)


def _classifications(spec: PlatformSpec) -> set[str]:
    return {c.classification for k in spec.contracts.values() for c in k.columns.values() if c.classification}


def _classification_findings(name: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    new_by_id = {c["id"]: (n, c) for n, c in new["columns"].items()}
    for ocol in old["columns"].values():
        if not ocol.get("classification"):
            continue
        hit = new_by_id.get(ocol["id"])
        if hit is None:
            continue
        nname, ncol = hit
        if ncol.get("classification") != ocol["classification"]:
            now = ncol.get("classification") or "none"
            out.append(f"{name}.{nname}: classification {ocol['classification']} removed (now {now})")
    return out


def policy_findings(old: dict[str, Any], new: dict[str, Any], classes: set[str]) -> list[str]:
    """Every way `new` policies let someone see more than `old` did."""
    from skyfed.governance.config import Residency, RolePolicy

    out: list[str] = []
    classes = set(classes) | {p for r in old["roles"].values() for p in r["masks"] if "*" not in p}
    for rname, oraw in old["roles"].items():
        if rname not in new["roles"]:
            continue  # a removed role sees nothing: stricter
        o, n = RolePolicy.model_validate(oraw), RolePolicy.model_validate(new["roles"][rname])
        for cls in sorted(classes):
            om, nm = o.mask_for(cls), n.mask_for(cls)
            if STRENGTH[nm] < STRENGTH[om]:
                out.append(f"role {rname}: mask of {cls} weakened from {om} to {nm}")
        if o.regions is not None and (n.regions is None or set(n.regions) - set(o.regions)):
            extra = "all regions" if n.regions is None else ", ".join(sorted(set(n.regions) - set(o.regions)))
            out.append(f"role {rname}: row access widened to {extra}")
        if o.row_filter and o.row_filter != n.row_filter:
            out.append(f"role {rname}: row filter {o.row_filter!r} changed to {n.row_filter!r}")
        if n.residency_exempt and not o.residency_exempt:
            out.append(f"role {rname}: now exempt from residency")
    ores, nres = Residency.model_validate(old["residency"]), Residency.model_validate(new["residency"])
    if nres.min_group_size < ores.min_group_size:
        out.append(f"residency: min_group_size lowered from {ores.min_group_size} to {nres.min_group_size}")
    for cls in sorted(classes):
        if ores.is_restricted(cls) and not nres.is_restricted(cls):
            out.append(f"residency: {cls} is no longer restricted")
    return out


def pinned_select(name: str, version: int, relation: str) -> str:
    """SQL giving `relation` (a table in the latest version's shape) the shape of `name@version`.

    Columns are matched by field id, so a renamed column gets its old name back; a
    column added later is left out; a widened type is cast back to the old type. A
    column dropped since then is still in storage (evolution keeps it), so it is
    read under its old name. For the query planner's `flight_leg@2`.
    """
    from skyfed.contracts.harmonize import q as quote
    from skyfed.contracts.types import duckdb_type

    hist = registry.history(name)
    old = next((r["body"] for r in hist if r["version"] == version), None)
    if old is None:
        raise SkyfedError(
            f"contract {name} has no version {version}",
            f"versions: {', '.join(str(r['version']) for r in hist) or 'none registered'}",
        )
    latest = {c["id"]: n for n, c in hist[-1]["body"]["columns"].items()}
    cols = []
    for old_name, col in old["columns"].items():
        current = latest.get(col["id"], old_name)
        cols.append(f"CAST({quote(current)} AS {duckdb_type(col['type'])}) AS {quote(old_name)}")
    return f"SELECT {', '.join(cols)} FROM {relation}"

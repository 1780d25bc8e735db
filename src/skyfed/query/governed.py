"""The caller's policies inside each region's SQL: masks, row access and residency per fragment.

The planner calls `Governor.fragment(select, region, canonical)` for every region's copy of
a fragment, *before* the canonical names become the region's table references and before
the SQL is transpiled to the region's dialect. Each governed table becomes a subquery that
masks its classified columns and keeps only the role's rows
(`skyfed.governance.policy.apply_policies`), so what leaves the region is already governed.
A fragment whose result crosses a region boundary (its region is not the coordinator's) is
checked with `cross_region=True`: restricted columns leave only inside aggregates over groups
of at least k rows; anything else raises PolicyRefusal naming the policy and what is allowed.

Roles: the caller's role (`--role`, `connect(role=...)`, `$SKYFED_ROLE`). With a governance
file and no role, the caller gets the built-in role `anonymous` unless the file defines one:
no mask rules (every classified column is NULL, default deny), every region's rows. Without a
governance file nothing is governed (`Governor` is not built).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp

from skyfed.governance.config import (
    Governance,
    RolePolicy,
    governance_path,
    load_governance,
)
from skyfed.governance.policy import PolicyRefusal, apply_policies
from skyfed.spec.models import Contract, PlatformSpec

ROLE_ENV = "SKYFED_ROLE"
ANONYMOUS = "anonymous"


@dataclass
class Governor:
    """One caller's policies, ready to rewrite fragments (pure: no I/O after construction)."""

    role: str
    gov: Governance
    contracts: dict[str, Contract]  # canonical and reference contracts with the governance file's classifications
    coordinator: str
    path: str | None = None
    _memo: dict[tuple[str, bool], tuple[exp.Expression, list[dict[str, Any]]]] = field(default_factory=dict, repr=False)
    _fingerprints: dict[str, str] = field(default_factory=dict, repr=False)  # salt -> fingerprint (policies are fixed)
    # the governance file's (size, mtime_ns) when it was loaded: Federation reloads the policies when it changes
    file_version: tuple[int, int] | None = None

    def start_plan(self) -> None:
        """Forget the rewrites of the previous plan (the salt or the policies may have changed since)."""
        self._memo.clear()

    @property
    def policy(self) -> RolePolicy:
        return self.gov.role(self.role)

    def fingerprint(self) -> str:
        """The role and its policies (not the salt's value): part of the result- and plan-cache keys.
        Computed once per salt (the salt comes from the environment; the rest is fixed for this Governor)."""
        salt = self.gov.salt()
        if salt not in self._fingerprints:
            self._fingerprints[salt] = self._fingerprint()
        return self._fingerprints[salt]

    def _fingerprint(self) -> str:
        body = {"role": self.role, "policy": self.policy.model_dump(), "residency": self.gov.residency.model_dump(),
                "classified": {n: {c: x.classification for c, x in k.columns.items() if x.classification}
                               for n, k in sorted(self.contracts.items())},
                "salt": hashlib.sha256(self.gov.salt().encode()).hexdigest()[:16]}  # fmt: skip
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def region_allowed(self, region: str) -> bool:
        """False when the role's row access excludes every row of `region` (the planner prunes it)."""
        regions = self.policy.regions
        return regions is None or region in regions

    def _governed(self, contract: Contract) -> bool:
        # reference tables (no region column) with no classified column are public reference data
        return "region" in contract.columns or any(c.classification for c in contract.columns.values())

    def _check_live(self, table: Any, cross: bool) -> None:
        """A live source table has no classifications: only a role that sees everything clear may read it,
        and only where its rows do not leave the region (every column may be restricted)."""
        dotted = getattr(table, "dotted", str(table))
        if self.policy.mask_for("pii.any") != "clear" or self.policy.mask_for("any") != "clear":
            raise PolicyRefusal("mask", f"role {self.role} may not read the live source table {dotted}: its columns "
                                "are not classified, so they cannot be masked", "the canonical tables (masked per "
                                "classification), e.g. flight_leg, booking")
        if cross and not self.policy.residency_exempt:
            raise PolicyRefusal("residency", f"{dotted} is a raw source table; its rows may not leave its region",
                                f"run with --coordinator {getattr(table, 'region', 'its region')}, or query the "
                                "canonical tables")

    def fragment(self, select: exp.Expression, region: str,
                 canonical: Callable[[exp.Table], tuple[str | None, str] | None],
                 live: dict[str, Any] | None = None) -> tuple[exp.Expression, list[dict[str, Any]]]:  # fmt: skip
        """`select` (one region's copy, DuckDB over canonical names) with the role's policies applied inside it."""
        live = live or {}
        names: dict[str, Contract] = {}
        cross = region != self.coordinator
        for t in select.find_all(exp.Table):
            hit = canonical(t)
            name = hit[1] if hit is not None else t.name
            if name in live:
                self._check_live(live[name], cross)
                continue
            contract = self.contracts.get(name)
            if contract is not None and self._governed(contract):
                names[t.name] = contract
        if not names:
            return select, []
        # every region gets the same fragment: rewrite once per (fragment, crosses or not), copy for the others
        memo_key = (select.sql("duckdb"), cross)
        if memo_key in self._memo:
            tree, made = self._memo[memo_key]
            return tree.copy(), [{**d, "region": region} for d in made]
        try:
            rw = apply_policies(select, role=self.role, contracts=names, gov=self.gov, cross_region=cross)
        except PolicyRefusal as exc:  # name tables as the user wrote them (eu.booking), not the planner's eu__booking
            for internal in names:
                hit = canonical(exp.to_table(internal))
                if hit is not None and hit[0] is not None:
                    exc.message = exc.message.replace(f"{internal}.", f"{hit[0]}.{hit[1]}.")
            exc.args = (exc.message,)
            raise
        decisions = [{"region": region, "crosses_boundary": cross, **d.to_dict()} for d in rw.decisions]
        tree = rw.tree if rw.tree is not None else sqlglot.parse_one(rw.sql, read="duckdb")
        self._memo[memo_key] = (tree, decisions)
        return tree.copy(), decisions


def to_bigquery_masks(tree: exp.Expression) -> exp.Expression:
    """DuckDB's sha256(text) is lowercase hex; BigQuery's SHA256 is BYTES: TO_HEX(SHA256(..)) gives the same text,
    so a hashed value joins and counts the same in every region."""
    def fix(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.SHA2):
            return exp.Anonymous(this="TO_HEX", expressions=[exp.Anonymous(this="SHA256", expressions=[node.this])])
        return node

    return tree.transform(fix)


def resolve_role(role: str | None) -> str | None:
    return role or os.environ.get(ROLE_ENV) or None


def build_governor(spec: PlatformSpec, *, role: str | None, coordinator: str,
                   governance: Governance | str | os.PathLike[str] | None = None,
                   spec_path: str | os.PathLike[str] | None = None) -> Governor | None:  # fmt: skip
    """The caller's Governor, or None when no governance file applies (the query runs ungoverned).

    Found from: `governance` (a Governance or a path), else $SKYFED_GOVERNANCE, else
    skyfed.governance.yaml beside the spec's path (or beside $SKYFED_SPEC).
    An unknown role raises SkyfedError naming the known roles.
    """
    path: Path | None = None
    version: tuple[int, int] | None = None
    if isinstance(governance, Governance):
        gov = governance
    else:
        explicit = str(governance) if governance is not None else None
        path = governance_path(spec_path or os.environ.get("SKYFED_SPEC") or None, explicit)
        if path is None:
            return None
        version = file_version(path)  # before reading: a change during the read is seen as a change next time
        gov = load_governance(path)
    name = resolve_role(role) or ANONYMOUS
    if name == ANONYMOUS and ANONYMOUS not in gov.roles:
        gov = gov.model_copy(update={"roles": {**gov.roles, ANONYMOUS: RolePolicy(description="no role given: every "
                                                                                  "classified column is NULL")}})
    gov.role(name)  # unknown role: refused here, with the known roles
    contracts = gov.classify(dict(spec.contracts))  # canonical and reference contracts
    return Governor(role=name, gov=gov, contracts=contracts, coordinator=coordinator, path=str(path) if path else None,
                    file_version=version)  # fmt: skip


def file_version(path: str | os.PathLike[str] | None) -> tuple[int, int] | None:
    """(size, mtime_ns) of the governance file, None without one (or when it is gone)."""
    if path is None:
        return None
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns

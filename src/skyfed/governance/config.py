"""The governance file: policies and contract-evolution settings beside the spec.

The platform spec has no policy section yet, so policies live in
`skyfed.governance.yaml` next to the spec (or the file named by
$SKYFED_GOVERNANCE / --governance). It is validated like the spec: unknown keys are
errors. When the spec gains a `governance:` section with this model, the loader
only has to read it from there (see docs/governance.md).

Masks, strongest first: null (the value is NULL), redact (a fixed marker),
hash (salted sha256: joins and counts still work), partial (only the last 4
characters of a value of at least 8), clear. A classified column for which a
role has no rule gets `null`: default deny.

The file also holds the reviewed inventory of classified columns (it may add to the
spec's classifications, never contradict them), compatibility overrides, and the
drift mode of each mapping (skyfed.governance.drift).
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from skyfed.errors import SkyfedError
from skyfed.spec.issues import nearest
from skyfed.spec.models import Compatibility, Contract, PlatformSpec

ENV_VAR = "SKYFED_GOVERNANCE"
FILE_NAME = "skyfed.governance.yaml"
MaskKind = Literal["null", "redact", "hash", "partial", "clear"]
DriftMode = Literal["evolve", "freeze", "discard_row", "discard_value"]
STRENGTH: dict[str, int] = {"null": 4, "redact": 4, "hash": 2, "partial": 1, "clear": 0}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContractSettings(_Model):
    """Per contract: the compatibility override and declared renames (new name -> old name)."""

    compatibility: Compatibility | None = None
    renames: dict[str, str] = Field(default_factory=dict)


class RolePolicy(_Model):
    """What one role may see: a mask per classification pattern, and which rows."""

    description: str | None = None
    masks: dict[str, MaskKind] = Field(default_factory=dict, description="classification glob -> mask")
    regions: list[str] | None = Field(None, description="rows whose `region` is one of these; None = all")
    row_filter: str | None = Field(None, description="extra SQL predicate over the canonical table")
    residency_exempt: bool = False

    def mask_for(self, classification: str | None) -> MaskKind:
        """The mask of a column with `classification` (most specific pattern wins)."""
        if not classification:
            return "clear"
        hits = [(len(p.replace("*", "")), m) for p, m in self.masks.items() if fnmatch.fnmatchcase(classification, p)]
        return max(hits)[1] if hits else "null"


class Residency(_Model):
    """Classified columns that may leave their region only aggregated over >= k rows."""

    restricted: list[str] = Field(default_factory=list, description="classification globs")
    min_group_size: int = Field(10, ge=1)

    def is_restricted(self, classification: str | None) -> bool:
        return bool(classification) and any(fnmatch.fnmatchcase(classification or "", p) for p in self.restricted)


class DriftModes(_Model):
    """What to do when a source drifts: for new source columns and for changed source types."""

    columns: DriftMode = Field("evolve", description="new source columns (and removed ones)")
    types: DriftMode = Field("evolve", description="a source column whose type changed")


class DriftSettings(_Model):
    """Drift modes per mapping (skyfed.governance.drift); a plain mode applies to both kinds of change."""

    default: DriftMode | DriftModes = "evolve"
    mappings: dict[str, DriftMode | DriftModes] = Field(default_factory=dict, description="mapping name -> mode")

    def modes_for(self, mapping: str) -> DriftModes:
        chosen = self.mappings.get(mapping, self.default)
        return chosen if isinstance(chosen, DriftModes) else DriftModes(columns=chosen, types=chosen)


class Governance(_Model):
    """The whole governance file."""

    salt_env: str = Field("SKYFED_MASK_SALT", description="environment variable holding the hash salt")
    contracts: dict[str, ContractSettings] = Field(default_factory=dict)
    roles: dict[str, RolePolicy] = Field(default_factory=dict)
    residency: Residency = Field(default_factory=Residency)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    classifications: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="contract -> column -> classification, in addition to the spec's own"
    )

    def classify(self, contracts: dict[str, Contract]) -> dict[str, Contract]:
        """The contracts with this file's classifications added; an unknown column or a disagreement is an error.

        The file may only add classifications (a reviewed inventory kept by the
        governance team): it can never unclassify or reclassify what the spec says.
        """
        if not self.classifications:
            return contracts
        out = dict(contracts)
        for cname, cols in self.classifications.items():
            if cname not in contracts:
                guess = nearest(cname, contracts)
                raise SkyfedError(
                    f"the governance file classifies columns of a contract {cname!r} that the spec does not have"
                    + (f" (did you mean {guess!r}?)" if guess else ""),
                    f"contracts of the spec: {', '.join(contracts)}",
                )
            contract = contracts[cname]
            columns = dict(contract.columns)
            for col, cls in cols.items():
                if col not in columns:
                    guess = nearest(col, columns)
                    raise SkyfedError(
                        f"the governance file classifies {cname}.{col}, a column the contract does not have"
                        + (f" (did you mean {guess!r}?)" if guess else ""),
                        f"columns of {cname}: {', '.join(columns)}",
                    )
                own = columns[col].classification
                if own and own != cls:
                    raise SkyfedError(
                        f"the governance file classifies {cname}.{col} as {cls} but the spec says {own}",
                        "make them agree (change the spec's classification through `skyfed contracts check`)",
                    )
                columns[col] = columns[col].model_copy(update={"classification": cls})
            out[cname] = contract.model_copy(update={"columns": columns})
        return out

    def role(self, name: str) -> RolePolicy:
        if name not in self.roles:
            known = ", ".join(sorted(self.roles)) or "(none defined)"
            raise SkyfedError(
                f"role {name!r} has no policy, so it may not read governed tables",
                f"use one of the roles of the governance file: {known}",
            )
        return self.roles[name]

    def salt(self) -> str:
        return os.environ.get(self.salt_env, "")


def governance_path(spec_path: str | os.PathLike[str] | None, explicit: str | None = None) -> Path | None:
    """--governance, else $SKYFED_GOVERNANCE, else skyfed.governance.yaml beside the spec (if it exists)."""
    if explicit or os.environ.get(ENV_VAR):
        path = Path(explicit or os.environ[ENV_VAR])
        if not path.is_file():
            raise SkyfedError(f"governance file {path} does not exist", f"check --governance or ${ENV_VAR}")
        return path
    if spec_path is None:
        return None
    beside = Path(spec_path).parent / FILE_NAME
    return beside if beside.is_file() else None


def governed_spec(spec: PlatformSpec, gov: Governance) -> PlatformSpec:
    """The spec with the governance file's classifications and compatibility overrides applied to its contracts."""
    overrides = {n: s.compatibility for n, s in gov.contracts.items() if s.compatibility and n in spec.contracts}
    if not gov.classifications and not overrides:
        return spec
    contracts = dict(gov.classify(spec.contracts))
    for name, mode in overrides.items():
        contracts[name] = contracts[name].model_copy(update={"compatibility": mode})
    return spec.model_copy(update={"contracts": contracts})


def governance_for(spec_path: str | os.PathLike[str] | None = None) -> Governance:
    """The governance of a spec: as governance_path finds it, with $SKYFED_SPEC standing in for an unknown spec path."""
    return load_governance(governance_path(spec_path or os.environ.get("SKYFED_SPEC") or None))


def load_governance(path: str | os.PathLike[str] | None) -> Governance:
    """Read and validate a governance file; no file means no roles and no overrides."""
    if path is None:
        return Governance()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SkyfedError(f"governance file {path} is not valid YAML: {exc}", "fix the syntax") from None
    try:
        return Governance.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SkyfedError(
            f"governance file {path}: {where}: {first['msg']} ({exc.error_count()} problem(s))",
            "see docs/governance.md for the file's keys",
        ) from None

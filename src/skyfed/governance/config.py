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
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from skyfed.errors import SkyfedError
from skyfed.spec.models import Compatibility

ENV_VAR = "SKYFED_GOVERNANCE"
FILE_NAME = "skyfed.governance.yaml"
MaskKind = Literal["null", "redact", "hash", "partial", "clear"]
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


class Governance(_Model):
    """The whole governance file."""

    salt_env: str = Field("SKYFED_MASK_SALT", description="environment variable holding the hash salt")
    contracts: dict[str, ContractSettings] = Field(default_factory=dict)
    roles: dict[str, RolePolicy] = Field(default_factory=dict)
    residency: Residency = Field(default_factory=Residency)

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

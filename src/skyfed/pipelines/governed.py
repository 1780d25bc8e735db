"""Which governance role a model build reads as, and its federation for that role.

A model's federated SQL runs as a role of the governance file, so masks, row filters and
residency guards are applied inside each region's SQL of the build, exactly as for a person
querying. The role is, in order: the model's `role:` config key (or `models/project.yaml`
defaults), else the governance file's role named `pipelines` (the service role, if the file
defines one), else `anonymous` (every classified column NULL: least privilege).
No governance file: nothing is governed and the role is not used.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from skyfed.governance.config import Governance, governance_path, load_governance

SERVICE_ROLE = "pipelines"
DEFAULT_ROLE = "anonymous"


class Policies:
    """The governance of one run: resolves each model's role and keeps one federation per role."""

    def __init__(self, governance: Governance | str | os.PathLike[str] | None = None, spec_path: str | None = None):
        self.path: Path | None = None
        if isinstance(governance, Governance):
            self.gov: Governance | None = governance
        else:
            self.path = governance_path(spec_path or os.environ.get("SKYFED_SPEC") or None,
                                        str(governance) if governance is not None else None)  # fmt: skip
            self.gov = load_governance(self.path) if self.path is not None else None
        self._feds: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    @property
    def governed(self) -> bool:
        return self.gov is not None

    def role_of(self, model: Any) -> str | None:
        """The role `model` builds as (None when nothing is governed)."""
        if self.gov is None:
            return None
        if model.config.role:
            return model.config.role
        return SERVICE_ROLE if SERVICE_ROLE in self.gov.roles else DEFAULT_ROLE

    def federation(self, base: Any, model: Any, region: str | None = None) -> Any:
        """`base` (same spec and timeout) as `model`'s role; one connection per role and coordinator per run.

        A regional model's part is coordinated inside its own region (`region`), so the residency
        policy lets row-level results of restricted columns be built there; a global model is
        coordinated where `base` is.
        """
        role = self.role_of(model)
        if role is None:
            return base
        coordinator = region or base.coordinator
        with self._lock:
            if (role, coordinator) not in self._feds:
                from skyfed.query import connect

                self._feds[(role, coordinator)] = connect(base.spec, role=role, governance=self.path or self.gov,
                                                          cache=False, timeout=base.timeout, coordinator=coordinator)  # fmt: skip
            return self._feds[(role, coordinator)]

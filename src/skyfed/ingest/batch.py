"""`skyfed ingest`: choose mappings, run each, record the results."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from skyfed.catalog import runs
from skyfed.errors import SkyfedError
from skyfed.ingest.runner import MappingResult, run_mapping
from skyfed.spec.issues import nearest
from skyfed.spec.models import Mapping, PlatformSpec

ProgressFactory = Callable[[Mapping], Callable[[int, int | None], None]]


def select_mappings(spec: PlatformSpec, selectors: Sequence[str] = ()) -> list[Mapping]:
    """Mappings named by `selectors`: a mapping name, a region, `region.source`, or a contract."""
    if not selectors:
        return list(spec.mappings)
    chosen: list[Mapping] = []
    for sel in selectors:
        found = [
            m
            for m in spec.mappings
            if sel in (m.name, m.source, m.contract, m.source.split(".")[0], f"{m.source}.{m.table}")
        ]
        if not found:
            names = [m.name for m in spec.mappings] + [m.source for m in spec.mappings] + list(spec.regions)
            guess = nearest(sel, names)
            raise SkyfedError(
                f"nothing to ingest matches '{sel}'" + (f" (did you mean '{guess}'?)" if guess else ""),
                hint="name a mapping, a region, a region.source or a contract; `skyfed validate` lists them",
            )
        chosen.extend(m for m in found if m not in chosen)
    return chosen


def ingest(
    spec: PlatformSpec,
    selectors: Sequence[str] = (),
    *,
    full_refresh: bool = False,
    progress_for: ProgressFactory | None = None,
    keep_going: bool = True,
) -> tuple[str, list[MappingResult], list[tuple[Mapping, SkyfedError]]]:
    """Run the selected mappings; a failing mapping does not stop the others unless keep_going=False."""
    run_id = uuid.uuid4().hex[:16]
    results: list[MappingResult] = []
    failures: list[tuple[Mapping, SkyfedError]] = []
    for mapping in select_mappings(spec, selectors):
        started = runs.now()
        try:
            res = run_mapping(
                spec,
                mapping,
                full_refresh=full_refresh,
                run_id=run_id,
                on_progress=progress_for(mapping) if progress_for else None,
            )
        except SkyfedError as exc:
            failures.append((mapping, exc))
            runs.record(
                {
                    "run_id": run_id,
                    "mapping": mapping.name,
                    "region": mapping.source.split(".")[0],
                    "source": mapping.source,
                    "source_table": mapping.table,
                    "contract": mapping.contract,
                    "status": "failed",
                    "started_at": started,
                    "finished_at": runs.now(),
                    "detail": {"error": exc.message, "hint": exc.hint},
                }
            )
            if not keep_going:
                break
            continue
        results.append(res)
        d = res.to_dict()
        runs.record(
            {
                **{k: d[k] for k in ("run_id", "mapping", "region", "source", "source_table", "contract", "status")},
                **{k: d[k] for k in ("rows_read", "rows_loaded", "rows_quarantined", "rows_filtered", "rows_superseded")},
                "bytes_read": d["bytes_read"],
                "seconds": d["seconds"],
                "snapshot_id": d["snapshot_id"],
                "started_at": started,
                "finished_at": runs.now(),
                "detail": {
                    k: d[k]
                    for k in ("quarantine_reasons", "warnings", "position_from", "position_to", "notes", "rows_committed")
                },
            }
        )
    return run_id, results, failures

"""`skyfed ingest`: choose mappings, run each, record the results."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from skyfed.catalog import runs
from skyfed.errors import SkyfedError
from skyfed.governance.hooks import after_ingest
from skyfed.ingest.runner import MappingResult, run_mapping
from skyfed.spec.issues import nearest
from skyfed.spec.models import Mapping, PlatformSpec, PubSubSource

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


def streaming_only(spec: PlatformSpec, mapping: Mapping) -> bool:
    """Whether the mapping reads a Pub/Sub source, which only `skyfed stream` reads."""
    region, _, source = mapping.source.partition(".")
    return isinstance(spec.regions[region].sources[source], PubSubSource)


def _skipped(mapping: Mapping, run_id: str) -> MappingResult:
    region = mapping.source.split(".")[0]
    res = MappingResult(run_id, mapping.name, region, mapping.source, mapping.table, mapping.contract, status="skipped")
    res.notes.append(f"skipped: {mapping.source} is a Pub/Sub source, read only by `skyfed stream`")
    return res


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
        if not selectors and streaming_only(spec, mapping):  # named explicitly, it fails and says why
            results.append(_skipped(mapping, run_id))
            continue
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
            if problem := after_ingest(spec, mapping.name, run_id, "failed", None):
                exc.hint = f"{exc.hint}; {problem}" if exc.hint else problem
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
        if problem := after_ingest(spec, mapping.name, run_id, res.status, res.rows_loaded):
            res.notes.append(problem)
    return run_id, results, failures

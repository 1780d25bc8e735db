"""Compare the curated stores with the generator's ground truth (the demo's proof)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from skyfed.contracts.types import contract_schema
from skyfed.ingest.stores import open_store
from skyfed.ingest.stores.checksum import table_checksum
from skyfed.spec.models import PlatformSpec

CONTRACTS = ("flight_leg", "booking", "customer_feedback")


def verify_against_truth(spec: PlatformSpec, state: Path) -> list[dict[str, Any]]:
    """Per region and contract: curated rows, ground-truth rows, and whether they are identical."""
    rows = []
    for contract in CONTRACTS:
        truth_all = pq.read_table(state / "seed" / "ground_truth" / f"{contract}.parquet")
        schema = contract_schema(spec.contracts[contract])
        for region in spec.regions:
            store = open_store(region, spec.regions[region].store)
            truth = truth_all.filter(pc.equal(truth_all["region"], region)).cast(schema)
            got = store.read(contract) if contract in store.table_names() else schema.empty_table()
            rows.append(
                {
                    "region": region,
                    "contract": contract,
                    "store": spec.regions[region].store.kind,
                    "curated_rows": got.num_rows,
                    "truth_rows": truth.num_rows,
                    "identical": table_checksum(got) == table_checksum(truth),
                }
            )
    return rows

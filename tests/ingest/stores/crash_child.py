"""Child process of the crash tests: open a store and commit one batch (SKYFED_STORE_CRASH_AT may kill it).

argv[1] is JSON: {"spec": <store spec>, "region", "table", "ids": [start, stop], "generation", "position", "run_id", "replace"}.
"""

from __future__ import annotations

import json
import sys

from pydantic import TypeAdapter

from skyfed.ingest.stores import open_store
from skyfed.spec.models import Store
from stores_testdata import CONTRACT, flights

args = json.loads(sys.argv[1])
store = open_store(args["region"], TypeAdapter(Store).validate_python(args["spec"]))
store.ensure_table(args["table"], CONTRACT)
result = store.commit(
    args["table"],
    flights(range(*args["ids"]), args["generation"]),
    key=list(CONTRACT.key),
    mapping="ops",
    position=args["position"],
    run_id=args["run_id"],
    replace=args.get("replace", False),
)
print(json.dumps(result.to_dict()))

"""Child process of the crash tests: open a store and commit one batch (SKYFED_STORE_CRASH_AT may kill it).

argv[1] is JSON: {"spec": <store spec>, "region", "table", "ids": [start, stop], "generation", "position", "run_id",
"replace", "deletes": [start, stop] (optional: flight ids to delete in the same commit),
"query": true (optional: commit through `commit_query` from DuckDB)}.
"""

from __future__ import annotations

import json
import sys

import duckdb
from pydantic import TypeAdapter

from skyfed.ingest.stores import open_store
from skyfed.spec.models import Store
from stores_testdata import CONTRACT, flights

args = json.loads(sys.argv[1])
store = open_store(args["region"], TypeAdapter(Store).validate_python(args["spec"]))
store.ensure_table(args["table"], CONTRACT)
rows = flights(range(*args["ids"]), args["generation"])
common = dict(key=list(CONTRACT.key), mapping="ops", position=args["position"], run_id=args["run_id"],
              replace=args.get("replace", False))
if args.get("query"):  # the DuckDB path: the store runs the query itself
    con = duckdb.connect()
    con.register("rows", rows)
    result = store.commit_query(args["table"], con, "SELECT * FROM rows", **common)
else:
    deletes = flights(range(*args["deletes"])).select(["flight_id"]) if args.get("deletes") else None
    result = store.commit(args["table"], rows, deletes=deletes, **common)
print(json.dumps(result.to_dict()))

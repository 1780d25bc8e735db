"""File connector on local folders and on the Cloud Storage emulator."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skyfed.connectors.base import ReadPosition, ReadRequest, Reject
from skyfed.connectors.files import FilesConnector
from skyfed.connectors.registry import connector_for
from skyfed.errors import SkyfedError
from skyfed.spec.models import GcsSource


def _local(root: Path, **tables: dict) -> FilesConnector:
    spec = GcsSource.model_validate({"kind": "gcs", "path": str(root), "tables": tables})
    c = connector_for(spec, "na.drops")
    assert isinstance(c, FilesConnector)
    return c


def _read(c: FilesConnector, req: ReadRequest, after: ReadPosition | None = None):  # noqa: ANN202
    rejects: list[Reject] = []
    upto = c.position(req)
    batches = list(c.read(req, upto, after, rejects.append))
    table = pa.Table.from_batches(batches) if batches else None
    return table, rejects, upto


def test_csv_raw_strings_provenance_and_inferred_schema(tmp_path: Path) -> None:
    (tmp_path / "legs").mkdir()
    (tmp_path / "legs" / "a.csv").write_text("id,fare,code\n1,10.50,SF1\n2,11.25,SF2\n")
    c = _local(tmp_path, legs={"pattern": "legs/*.csv", "format": "csv"})
    info = c.table_info("legs")
    assert info.schema.field("id").type == pa.int64() and info.schema.field("fare").type == pa.float64()
    table, rejects, _ = _read(c, ReadRequest("legs"))
    assert rejects == []
    assert table.to_pylist() == [
        {"id": "1", "fare": "10.50", "code": "SF1", "_source_object": str(tmp_path / "legs" / "a.csv"), "_source_row": 2},
        {"id": "2", "fare": "11.25", "code": "SF2", "_source_object": str(tmp_path / "legs" / "a.csv"), "_source_row": 3},
    ]


def test_bad_csv_lines_and_invalid_utf8_go_to_rejects(tmp_path: Path) -> None:
    data = b"id,name\n1,ok\n2,too,many\n3,caf\xe9\n4\n5,fine\n"
    (tmp_path / "x.csv").write_bytes(data)
    c = _local(tmp_path, t={"pattern": "*.csv", "format": "csv"})
    table, rejects, _ = _read(c, ReadRequest("t"))
    assert table.column("id").to_pylist() == ["1", "5"]
    assert table.column("_source_row").to_pylist() == [2, 6]
    where = {r.location.rsplit(":", 1)[1]: r for r in rejects}
    assert set(where) == {"3", "4", "5"}
    assert "expected 2 fields, found 3" in where["3"].reason and where["3"].raw == "2,too,many"
    assert where["4"].reason == "invalid UTF-8" and "caf" in where["4"].raw
    assert "found 1" in where["5"].reason
    # without a handler, a bad record is an error naming the place, never silently dropped
    with pytest.raises(SkyfedError, match=r"x.csv:3"):
        list(c.read(ReadRequest("t"), c.position(ReadRequest("t"))))


def test_jsonl_bad_lines_and_nested_values(tmp_path: Path) -> None:
    lines = [b'{"id": 1, "name": "a", "tags": {"x": 1}}', b"{not json", b'{"id": 2, "name": "b\xff"}',
             b"", b'{"id": 3, "extra": true}', b"[1,2]"]  # fmt: skip
    (tmp_path / "e.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    c = _local(tmp_path, ev={"pattern": "*.jsonl", "format": "jsonl"})
    table, rejects, _ = _read(c, ReadRequest("ev"))
    assert table.column_names[:4] == ["id", "name", "tags", "extra"]
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ["1", "3"] and rows[0]["tags"] == '{"x":1}' and rows[1]["extra"] == "true"
    assert [r["_source_row"] for r in rows] == [1, 5]
    got = sorted((r.location.rsplit(":", 1)[1], r.reason) for r in rejects)
    assert got == [("2", "not a JSON object"), ("3", "invalid UTF-8"), ("6", "not a JSON object")]


def test_schema_change_and_hive_partitions(tmp_path: Path) -> None:
    for day, body in [("2024-01-01", "id,code\n1,A\n"), ("2024-01-02", "id,code,gate\n2,B,G7\n")]:
        (tmp_path / f"dt={day}").mkdir()
        (tmp_path / f"dt={day}" / "part.csv").write_text(body)
    c = _local(tmp_path, t={"pattern": "dt=*/*.csv", "format": "csv", "hive_partitioning": True})
    assert c.table_info("t").partitions == ("dt",)
    table, _, _ = _read(c, ReadRequest("t"))
    assert table.select(["id", "code", "gate", "dt"]).to_pylist() == [
        {"id": "1", "code": "A", "gate": None, "dt": "2024-01-01"},
        {"id": "2", "code": "B", "gate": "G7", "dt": "2024-01-02"},
    ]
    table, _, _ = _read(c, ReadRequest("t", columns=("id", "dt"), filter="dt = '2024-01-02'"))
    assert table.column_names == ["id", "dt", "_source_object", "_source_row"] and table.num_rows == 1


def test_local_positions_new_replaced_unchanged(tmp_path: Path) -> None:
    (tmp_path / "a.parquet").write_bytes(b"")
    pq.write_table(pa.table({"id": [1, 2]}), tmp_path / "a.parquet")
    c = _local(tmp_path, t={"pattern": "*.parquet", "format": "parquet"})
    req = ReadRequest("t")
    first, _, pos1 = _read(c, req)
    assert first.column("id").to_pylist() == [1, 2] and first.column("_source_row").to_pylist() == [1, 2]
    again, _, pos2 = _read(c, req, after=pos1)
    assert again is None and pos2 == pos1  # unchanged: skipped
    pq.write_table(pa.table({"id": [3]}), tmp_path / "b.parquet")
    new, _, pos3 = _read(c, req, after=pos2)
    assert new.column("id").to_pylist() == [3]  # only the new object
    time.sleep(0.01)
    pq.write_table(pa.table({"id": [1, 2, 20]}), tmp_path / "a.parquet")
    replaced, _, _ = _read(c, req, after=ReadPosition.from_json(pos3.to_json()))
    assert replaced.column("id").to_pylist() == [1, 2, 20]  # replaced: read again


def test_avro(tmp_path: Path) -> None:
    import fastavro

    schema = {"type": "record", "name": "r", "fields": [{"name": "id", "type": "long"}, {"name": "s", "type": "string"}]}
    with open(tmp_path / "x.avro", "wb") as fh:
        fastavro.writer(fh, schema, [{"id": 1, "s": "a"}, {"id": 2, "s": "b"}])
    c = _local(tmp_path, t={"pattern": "*.avro", "format": "avro"})
    table, _, _ = _read(c, ReadRequest("t"))
    assert table.select(["id", "s", "_source_row"]).to_pylist() == [
        {"id": 1, "s": "a", "_source_row": 1}, {"id": 2, "s": "b", "_source_row": 2}]  # fmt: skip


def test_empty_match_and_empty_file(tmp_path: Path) -> None:
    c = _local(tmp_path, t={"pattern": "*.csv", "format": "csv"})
    table, rejects, pos = _read(c, ReadRequest("t"))
    assert table is None and rejects == [] and pos.objects == {}
    assert any("matched no objects" in n for n in c.notes)
    (tmp_path / "empty.csv").write_bytes(b"")
    table, _, _ = _read(c, ReadRequest("t"))
    assert table is None and any("is empty" in n for n in c.notes)


# ---------------------------------------------------------------------------- Cloud Storage emulator


@pytest.fixture(scope="module")
def bucket(federation: object):  # noqa: ANN201
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="conn-test", credentials=AnonymousCredentials())
    b = client.bucket("conn-test-drops")
    if not b.exists():
        b = client.create_bucket("conn-test-drops")
    yield b


def _gcs(**over: object) -> FilesConnector:
    data = {"kind": "gcs", "bucket": "conn-test-drops", "prefix": "na",
            "tables": {"legs": {"pattern": "legs/dt=*/*.csv", "format": "csv", "hive_partitioning": True},
                       "ev": {"pattern": "events/*.jsonl", "format": "jsonl"}}}  # fmt: skip
    data.update(over)
    c = connector_for(GcsSource.model_validate(data), "na.drops")
    assert isinstance(c, FilesConnector)
    return c


def test_gcs_generations_and_rows(bucket) -> None:  # noqa: ANN001
    bucket.blob("na/legs/dt=2024-01-01/a.csv").upload_from_string("id,code\n1,A\n2,B\n")
    c = _gcs()
    req = ReadRequest("legs")
    table, rejects, pos1 = _read(c, req)
    assert rejects == [] and table.select(["id", "code", "dt"]).to_pylist() == [
        {"id": "1", "code": "A", "dt": "2024-01-01"}, {"id": "2", "code": "B", "dt": "2024-01-01"}]  # fmt: skip
    assert table.column("_source_object")[0].as_py() == "gs://conn-test-drops/na/legs/dt=2024-01-01/a.csv"
    assert list(pos1.objects) == ["legs/dt=2024-01-01/a.csv"]
    assert _read(c, req, after=pos1)[0] is None  # unchanged object skipped
    bucket.blob("na/legs/dt=2024-01-02/b.csv").upload_from_string("id,code,gate\n3,C,G1\n")
    new, _, pos2 = _read(c, req, after=pos1)
    assert new.select(["id", "gate"]).to_pylist() == [{"id": "3", "gate": "G1"}]
    bucket.blob("na/legs/dt=2024-01-01/a.csv").upload_from_string("id,code\n1,A\n2,B\n9,Z\n")
    replaced, _, pos3 = _read(c, req, after=pos2)
    assert replaced.column("id").to_pylist() == ["1", "2", "9"]
    assert pos3.objects["legs/dt=2024-01-01/a.csv"] != pos2.objects["legs/dt=2024-01-01/a.csv"]


def test_gcs_jsonl_rejects(bucket) -> None:  # noqa: ANN001
    bucket.blob("na/events/e1.jsonl").upload_from_string(b'{"id": 1}\n{"id": \n{"id": 3}\n')
    table, rejects, _ = _read(_gcs(), ReadRequest("ev"))
    assert table.column("id").to_pylist() == ["1", "3"]
    assert [(r.location, r.raw) for r in rejects] == [("gs://conn-test-drops/na/events/e1.jsonl:2", '{"id": ')]


def test_gcs_missing_bucket_is_named(federation: object) -> None:
    c = _gcs(bucket="no-such-bucket-xyz")
    with pytest.raises(SkyfedError, match=r"gcs source na.drops, table legs: bucket 'no-such-bucket-xyz' does not exist"):
        c.position(ReadRequest("legs"))


def test_undeclared_table(tmp_path: Path) -> None:
    with pytest.raises(SkyfedError, match=r"table 'nope' is not declared"):
        _local(tmp_path).table_info("nope")

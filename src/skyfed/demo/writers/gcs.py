"""na → Cloud Storage (the emulator locally) through google-cloud-storage: one object per export."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from skyfed.demo.writers.settings import NOT_RUNNING_HINT, GcsSettings
from skyfed.errors import SkyfedError

CONTENT_TYPES = {".csv": "text/csv", ".jsonl": "application/x-ndjson", ".parquet": "application/vnd.apache.parquet"}


def client(settings: GcsSettings):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    if settings.endpoint:
        os.environ.setdefault("STORAGE_EMULATOR_HOST", settings.endpoint)
        return storage.Client(project=settings.project, credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": settings.endpoint})
    return storage.Client(project=settings.project)


def _fail(settings: GcsSettings, exc: Exception) -> SkyfedError:
    msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return SkyfedError(f"cannot reach Cloud Storage at {settings.endpoint or 'storage.googleapis.com'} for region na ({msg})",
                       NOT_RUNNING_HINT)


def _bucket(settings: GcsSettings, create: bool):
    from google.api_core.exceptions import NotFound

    gcs = client(settings)
    try:
        return gcs.get_bucket(settings.bucket)
    except NotFound:
        if not create:
            return None
        return gcs.create_bucket(settings.bucket)
    except Exception as exc:
        raise _fail(settings, exc) from None


def write(settings: GcsSettings, objects: dict[str, bytes], advance: Callable[[int], None] | None = None) -> dict[str, int]:
    """Make the bucket hold exactly `objects`: upload what differs (by MD5), delete what is extra.

    Idempotent and cheap on a reseed with the same world (the emulator handles one request at
    a time, so skipping unchanged objects matters more than parallel uploads).
    """
    bucket = _bucket(settings, create=True)
    try:
        existing = {b.name: b for b in bucket.list_blobs()}
    except Exception as exc:
        raise _fail(settings, exc) from None
    extra = [b for name, b in existing.items() if name not in objects]
    todo = []
    for name, data in objects.items():
        old = existing.get(name)
        if old is not None and old.md5_hash == base64.b64encode(hashlib.md5(data).digest()).decode():
            if advance:
                advance(1)
            continue
        todo.append((name, data))

    def delete(blob) -> None:
        blob.delete()

    def upload(item: tuple[str, bytes]) -> None:
        name, data = item
        ext = os.path.splitext(name)[1]
        bucket.blob(name).upload_from_file(io.BytesIO(data), size=len(data),
                                           content_type=CONTENT_TYPES.get(ext, "application/octet-stream"))
        if advance:
            advance(1)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(delete, extra))
        list(pool.map(upload, todo))
    per_table: dict[str, int] = {}
    for name in objects:
        per_table[name.split("/", 1)[0]] = per_table.get(name.split("/", 1)[0], 0) + 1
    return {"objects": per_table, "uploaded": len(todo), "unchanged": len(objects) - len(todo), "deleted": len(extra)}


def inventory(settings: GcsSettings, tables: dict[str, str]) -> dict[str, dict[str, int] | None]:
    """Per table prefix: objects, bytes and data rows, read back by listing and downloading the objects."""
    import pyarrow.parquet as pq

    bucket = _bucket(settings, create=False)
    if bucket is None:
        return {t: None for t in tables}
    out: dict[str, dict[str, int] | None] = {}
    for table, fmt in tables.items():
        blobs = list(bucket.list_blobs(prefix=f"{table}/"))

        def rows(blob, _fmt=fmt) -> int:
            data = blob.download_as_bytes()
            if _fmt == "parquet":
                return pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
            lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
            return lines - 1 if _fmt == "csv" else lines  # CSV: minus the header

        with ThreadPoolExecutor(max_workers=8) as pool:
            counts = list(pool.map(rows, blobs))
        out[table] = {"objects": len(blobs), "bytes": int(sum(b.size or 0 for b in blobs)), "rows": int(sum(counts))}
    return out

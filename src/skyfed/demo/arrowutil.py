"""Small vectorized helpers to build Arrow columns (strings, decimals, timestamps) from numpy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def lookup(strings: list[str | None], codes: np.ndarray) -> pa.Array:
    """`strings[codes]` as an Arrow string array (a take, no per-row Python)."""
    return pa.array(strings, pa.string()).take(pa.array(codes, pa.int64()))


def join(*parts: pa.Array | str) -> pa.Array:
    """Element-wise concatenation; NULL if any part is NULL."""
    return pc.binary_join_element_wise(*parts, "")


def int_str(values: np.ndarray, width: int = 0) -> pa.Array:
    s = pc.cast(pa.array(values, pa.int64()), pa.string())
    return pc.utf8_lpad(s, width=width, padding="0") if width else s


def with_nulls(arr: pa.Array, null_mask: np.ndarray | None) -> pa.Array:
    if null_mask is None or not null_mask.any():
        return arr
    return pc.if_else(pa.array(null_mask), pa.scalar(None, arr.type), arr)


def ints(values: np.ndarray, typ: pa.DataType, null_mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(values.astype(typ.to_pandas_dtype()), typ, mask=null_mask if null_mask is not None and null_mask.any() else None)


def floats(values: np.ndarray, null_mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(values.astype(np.float64), pa.float64(), mask=null_mask if null_mask is not None and null_mask.any() else None)


def decimals(scaled: np.ndarray, precision: int, scale: int, null_mask: np.ndarray | None = None) -> pa.Array:
    """A decimal128 array from integers already scaled by 10**scale (exact, no float rounding)."""
    scaled = scaled.astype(np.int64)
    buf = np.empty((scaled.shape[0], 2), dtype=np.int64)
    buf[:, 0] = scaled
    buf[:, 1] = np.where(scaled < 0, -1, 0)
    arr = pa.Array.from_buffers(pa.decimal128(precision, scale), scaled.shape[0], [None, pa.py_buffer(buf.tobytes())])
    return with_nulls(arr, null_mask)


def timestamps(us: np.ndarray, tz: str | None = "UTC", null_mask: np.ndarray | None = None) -> pa.Array:
    arr = pa.array(us.astype(np.int64), pa.int64()).cast(pa.timestamp("us", tz=tz))
    return with_nulls(arr, null_mask)


def strftime(us: np.ndarray, fmt: str = "%Y-%m-%dT%H:%M:%S") -> pa.Array:
    """Format whole-second instants (given as naive wall-clock microseconds)."""
    arr = pa.array(us // 1_000_000, pa.int64()).cast(pa.timestamp("s"))
    return pc.strftime(arr, format=fmt)


def base36(values: np.ndarray, width: int) -> pa.Array:
    """Fixed-width upper-case base-36 codes (e.g. booking locators)."""
    alphabet = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
    v = values.astype(np.int64).copy()
    out = np.empty((v.shape[0], width), dtype=np.uint8)
    for i in range(width - 1, -1, -1):
        out[:, i] = alphabet[v % 36]
        v //= 36
    return pa.array(out.view(f"S{width}").reshape(-1)).cast(pa.string())


def concat_lines(lines: pa.Array) -> tuple[np.ndarray, pa.Buffer]:
    """Offsets and the data buffer of a string array, so row ranges are zero-copy byte slices."""
    arr = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    return offsets, arr.buffers()[2]

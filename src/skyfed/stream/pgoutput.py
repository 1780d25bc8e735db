"""A small decoder of PostgreSQL's built-in `pgoutput` logical replication messages (protocol 1).

Why our own: the PyPI decoder `pypgoutput` converts numeric to float and hides
commits (FIELD-NOTES). Values stay the exact text PostgreSQL sends; the harmonizer
casts them with the source's declared types, the same way as for text files.

Messages handled: B (begin), C (commit), R (relation), Y (type), O (origin),
I (insert), U (update), D (delete), T (truncate), M (logical message, ignored).
Tuple columns: `n` null, `t` text, `u` an unchanged TOASTed value that the server
did not send (returned as the UNCHANGED sentinel; the caller fills it, see
skyfed.stream.postgres).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Union

from skyfed.errors import SkyfedError

PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


class _Unchanged:
    """The value of a TOASTed column an UPDATE did not change (pgoutput sends 'u', not the value)."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()
Value = Union[str, None, _Unchanged]


@dataclass(frozen=True)
class Begin:
    final_lsn: int  # LSN of the transaction's commit record: known up front, increases with commit order
    commit_time: datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int  # the LSN to acknowledge once the transaction is durably applied
    commit_time: datetime


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    typmod: int
    is_key: bool  # part of the replica identity


@dataclass(frozen=True)
class Relation:
    relid: int
    namespace: str
    name: str
    replica_identity: str  # d (default: primary key), n (nothing), f (full), i (index)
    columns: tuple[Column, ...]

    @property
    def key(self) -> list[str]:
        return [c.name for c in self.columns if c.is_key]


@dataclass(frozen=True)
class TypeInfo:
    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True)
class Insert:
    relid: int
    new: list[Value]


@dataclass(frozen=True)
class Update:
    relid: int
    new: list[Value]
    old: list[Value] | None = None  # the whole old row (REPLICA IDENTITY FULL) or its key ('K'), if sent
    old_is_key_only: bool = False


@dataclass(frozen=True)
class Delete:
    relid: int
    old: list[Value]
    old_is_key_only: bool = True  # 'K': only the replica identity columns carry values


@dataclass(frozen=True)
class Truncate:
    relids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True)
class LogicalMessage:
    prefix: str
    content: bytes = field(repr=False)


Message = Union[Begin, Commit, Relation, TypeInfo, Origin, Insert, Update, Delete, Truncate, LogicalMessage]

_I64 = struct.Struct(">q")
_I32 = struct.Struct(">i")
_I16 = struct.Struct(">h")


def _time(us: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=us)


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\x00", pos)
    return buf[pos:end].decode(), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[list[Value], int]:
    (ncols,) = _I16.unpack_from(buf, pos)
    pos += 2
    values: list[Value] = []
    append = values.append
    for _ in range(ncols):
        kind = buf[pos]
        pos += 1
        if kind == 0x74:  # 't'
            (length,) = _I32.unpack_from(buf, pos)
            pos += 4
            append(buf[pos : pos + length].decode())
            pos += length
        elif kind == 0x6E:  # 'n'
            append(None)
        elif kind == 0x75:  # 'u'
            append(UNCHANGED)
        else:
            raise SkyfedError(
                f"pgoutput: unknown tuple column kind {chr(kind)!r} (binary mode is not used by skyfed)",
                "check the replication options (proto_version 1, no binary)",
            )
    return values, pos


def decode(payload: bytes) -> Message:
    """One pgoutput message as a typed record; raises SkyfedError on an unknown message type."""
    buf = bytes(payload)
    kind = buf[:1]
    if kind == b"I":
        (relid,) = _I32.unpack_from(buf, 1)
        new, _ = _tuple(buf, 6)  # byte 5 is 'N'
        return Insert(relid, new)
    if kind == b"U":
        (relid,) = _I32.unpack_from(buf, 1)
        pos = 5
        old: list[Value] | None = None
        key_only = False
        if buf[pos : pos + 1] in (b"K", b"O"):
            key_only = buf[pos : pos + 1] == b"K"
            old, pos = _tuple(buf, pos + 1)
        new, _ = _tuple(buf, pos + 1)  # skip 'N'
        return Update(relid, new, old, key_only)
    if kind == b"D":
        (relid,) = _I32.unpack_from(buf, 1)
        key_only = buf[5:6] == b"K"
        old, _ = _tuple(buf, 6)
        return Delete(relid, old, key_only)
    if kind == b"B":
        final_lsn, ts = struct.unpack_from(">qq", buf, 1)
        (xid,) = _I32.unpack_from(buf, 17)
        return Begin(final_lsn, _time(ts), xid)
    if kind == b"C":
        flags = buf[1]
        commit_lsn, end_lsn, ts = struct.unpack_from(">qqq", buf, 2)
        return Commit(flags, commit_lsn, end_lsn, _time(ts))
    if kind == b"R":
        (relid,) = _I32.unpack_from(buf, 1)
        namespace, pos = _cstring(buf, 5)
        name, pos = _cstring(buf, pos)
        identity = chr(buf[pos])
        (ncols,) = _I16.unpack_from(buf, pos + 1)
        pos += 3
        cols = []
        for _ in range(ncols):
            flags = buf[pos]
            cname, pos = _cstring(buf, pos + 1)
            oid, typmod = struct.unpack_from(">ii", buf, pos)
            pos += 8
            cols.append(Column(cname, oid, typmod, bool(flags & 1)))
        return Relation(relid, namespace or "pg_catalog", name, identity, tuple(cols))
    if kind == b"T":
        (n,) = _I32.unpack_from(buf, 1)
        options = buf[5]
        relids = struct.unpack_from(f">{n}i", buf, 6)
        return Truncate(tuple(relids), bool(options & 1), bool(options & 2))
    if kind == b"Y":
        (oid,) = _I32.unpack_from(buf, 1)
        namespace, pos = _cstring(buf, 5)
        name, _ = _cstring(buf, pos)
        return TypeInfo(oid, namespace, name)
    if kind == b"O":
        (lsn,) = _I64.unpack_from(buf, 1)
        name, _ = _cstring(buf, 9)
        return Origin(lsn, name)
    if kind == b"M":
        prefix, pos = _cstring(buf, 10)  # flags (1), lsn (8)
        (length,) = _I32.unpack_from(buf, pos)
        return LogicalMessage(prefix, buf[pos + 4 : pos + 4 + length])
    raise SkyfedError(
        f"pgoutput: unknown message type {kind!r}",
        "skyfed decodes protocol version 1; check the server's pgoutput version",
    )


def lsn_text(lsn: int) -> str:
    """PostgreSQL's spelling of an LSN: 0/1AF7778."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_int(text: str) -> int:
    """The number of an LSN written as PostgreSQL spells it."""
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)

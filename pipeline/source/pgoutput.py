"""A decoder of the built-in `pgoutput` plugin's messages: which rows each committed transaction updated or deleted.

Written from PostgreSQL's "Logical Replication Message Formats" (protocol version 1, tuples in text format), for
what change capture needs and no more: the `id` of every row a transaction updated or deleted, per table, and the
tables it truncated. Inserts are parsed (to stay in step with the stream) and dropped: new facts are found by id.
Every integer is big-endian; a String is UTF-8 ended by a zero byte.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from pipeline.errors import ChangeCaptureError


@dataclass(frozen=True)
class DecodedTransaction:
    """What one committed transaction changed of the published tables."""

    xid: int
    """The transaction id from the Begin message (32 bits: no epoch)."""
    commit_lsn: int
    """The LSN of the transaction's commit record."""
    end_lsn: int
    """The end LSN of the transaction: a slot advanced to it no longer returns this transaction."""
    changed: dict[str, frozenset[int]]
    """Table name -> the `id` values of its rows that were UPDATEd (the old id when it changed, and the new) or
    DELETEd. Only tables with such a change appear."""
    truncated: frozenset[str]
    """The names of the tables TRUNCATEd in the transaction."""


_NAMES = {
    "B": "Begin",
    "C": "Commit",
    "O": "Origin",
    "R": "Relation",
    "Y": "Type",
    "I": "Insert",
    "U": "Update",
    "D": "Delete",
    "T": "Truncate",
    "M": "Message",
}


_LAYOUTS = {fmt: struct.Struct(fmt) for fmt in ("!B", "!H", "!I", "!i", "!Q")}


class _Reader:
    """One message's bytes, read front to back; running short or past the end is a ChangeCaptureError.

    `what` names the field for the error message. It may hold `{}` placeholders for `args`, filled in only when a
    message is malformed: a run decodes hundreds of thousands of fields, and formatting each name costs more than
    reading the field.
    """

    __slots__ = ("data", "kind", "pos")

    def __init__(self, data: bytes, kind: str) -> None:
        self.data = data
        self.kind = kind
        self.pos = 1  # past the message type byte

    def fail(self, what: str) -> ChangeCaptureError:
        return ChangeCaptureError(f"malformed pgoutput {_NAMES[self.kind]} message ({self.kind!r}): {what}")

    def cut_short(self, what: str, *args: object) -> ChangeCaptureError:
        return self.fail(f"cut short reading {what.format(*args)} ({len(self.data)} bytes)")

    def take(self, size: int, what: str, *args: object) -> bytes:
        if size < 0:
            raise self.fail(f"{what.format(*args)} has a negative length ({size})")
        start, end = self.pos, self.pos + size
        if end > len(self.data):
            raise self.cut_short(what, *args)
        self.pos = end
        return bytes(self.data[start:end])

    def unpack(self, fmt: str, what: str, *args: object) -> int:
        layout = _LAYOUTS[fmt]
        start = self.pos
        if start + layout.size > len(self.data):
            raise self.cut_short(what, *args)
        self.pos = start + layout.size
        return layout.unpack_from(self.data, start)[0]

    def byte(self, what: str, *args: object) -> str:
        if self.pos >= len(self.data):
            raise self.cut_short(what, *args)
        self.pos += 1
        return chr(self.data[self.pos - 1])

    def int8(self, what: str) -> int:
        return self.unpack("!B", what)

    def int16(self, what: str) -> int:
        return self.unpack("!H", what)

    def int32(self, what: str) -> int:
        return self.unpack("!I", what)

    def int64(self, what: str) -> int:
        return self.unpack("!Q", what)

    def string(self, what: str) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise self.fail(f"{what} has no terminating zero byte")
        raw = bytes(self.data[self.pos : end])
        self.pos = end + 1
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8: {raw!r}") from None

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} bytes left over after the message")


@dataclass(frozen=True)
class _Relation:
    name: str
    columns: int
    id_index: int | None
    """The position of the `id` column in the relation's tuples, None when it has none."""


_Column = tuple[str, bytes | None]
"""One column of a tuple: its kind ('n' null, 'u' unchanged TOAST, 't' text, 'b' binary) and its bytes for t/b."""


def _read_tuple(reader: _Reader) -> list[_Column]:
    """The columns of a TupleData. The hot loop of a decode (a tuple per change): it reads the bytes in place,
    checking each bound itself, rather than through a `_Reader` call per field."""
    data, size = reader.data, len(reader.data)
    count = reader.int16("the tuple's number of columns")
    pos = reader.pos
    columns: list[_Column] = []
    for number in range(count):
        if pos >= size:
            raise reader.cut_short("column {}'s kind", number)
        kind = data[pos]
        pos += 1
        if kind in _NO_VALUE:
            columns.append(_NO_VALUE[kind])
        elif kind in _VALUE_KINDS:
            if pos + 4 > size:
                raise reader.cut_short("column {}'s length", number)
            length = _INT32.unpack_from(data, pos)[0]
            if length < 0:
                raise reader.fail(f"column {number}'s value has a negative length ({length})")
            pos += 4
            if pos + length > size:
                raise reader.cut_short("column {}'s value", number)
            columns.append((_VALUE_KINDS[kind], data[pos : pos + length]))
            pos += length
        else:
            raise reader.fail(f"column {number} has unknown kind {chr(kind)!r}")
    reader.pos = pos
    return columns


_NO_VALUE: dict[int, _Column] = {ord("n"): ("n", None), ord("u"): ("u", None)}
_VALUE_KINDS = {ord("t"): "t", ord("b"): "b"}
_INT32 = struct.Struct("!i")


def _table_name(namespace: str, name: str) -> str:
    """The relation's name, qualified unless it is in `public`; pgoutput sends pg_catalog as an empty namespace."""
    if namespace == "public":
        return name
    return f"{namespace or 'pg_catalog'}.{name}"


def _read_relation(reader: _Reader) -> tuple[int, _Relation]:
    relation_id = reader.int32("the relation id")
    name = _table_name(reader.string("the namespace"), reader.string("the relation name"))
    reader.int8("the replica identity")
    columns = reader.int16("the number of columns")
    id_index = None
    for number in range(columns):
        reader.int8(f"column {number}'s flags")
        if reader.string(f"column {number}'s name") == "id" and id_index is None:
            id_index = number
        reader.int32(f"column {number}'s type")
        reader.int32(f"column {number}'s type modifier")
    return relation_id, _Relation(name, columns, id_index)


class _Decoder:
    """The state of one decoding session: the relations announced so far and the transaction under way."""

    def __init__(self) -> None:
        self.relations: dict[int, _Relation] = {}
        self.begin: tuple[int, int] | None = None  # (final LSN, xid) of the open transaction
        self.changed: dict[str, set[int]] = {}
        self.truncated: set[str] = set()
        self.handlers: dict[str, Callable[[_Reader], DecodedTransaction | None]] = {
            "B": self._begin,
            "C": self._commit,
            "O": self._origin,
            "R": self._relation,
            "Y": self._type,
            "I": self._insert,
            "U": self._update,
            "D": self._delete,
            "T": self._truncate,
            "M": self._message,
        }

    def feed(self, message: bytes) -> DecodedTransaction | None:
        """Take one message; the transaction it completes, if it is a Commit."""
        if not message:
            raise ChangeCaptureError("malformed pgoutput stream: an empty message")
        kind = chr(message[0])
        if kind not in _NAMES:
            raise ChangeCaptureError(f"malformed pgoutput stream: unknown message type {kind!r} ({message[0]:#04x})")
        reader = _Reader(message, kind)
        done = self.handlers[kind](reader)
        reader.finish()
        return done

    def _in_transaction(self, reader: _Reader) -> None:
        if self.begin is None:
            raise reader.fail("outside a transaction (no Begin before it)")

    def _relation_of(self, reader: _Reader) -> _Relation:
        relation_id = reader.int32("the relation id")
        relation = self.relations.get(relation_id)
        if relation is None:
            raise reader.fail(f"relation {relation_id} was not described by a Relation message before")
        return relation

    def _row_id(self, reader: _Reader, relation: _Relation, columns: list[_Column]) -> int:
        if relation.id_index is None:
            raise reader.fail(f"table {relation.name} has no column named id")
        if len(columns) != relation.columns:
            raise reader.fail(f"a tuple of {len(columns)} columns for {relation.name}, of {relation.columns}")
        kind, value = columns[relation.id_index]
        if value is None:
            what = "null" if kind == "n" else "an unchanged TOAST value"
            raise reader.fail(f"the id of a {relation.name} row is {what}")
        if kind == "b":
            if len(value) not in (2, 4, 8):
                raise reader.fail(f"the binary id of a {relation.name} row has {len(value)} bytes")
            return int.from_bytes(value, "big", signed=True)
        try:
            return int(value.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise reader.fail(f"the id of a {relation.name} row is not an integer: {value[:40]!r}") from None

    def _begin(self, reader: _Reader) -> None:
        if self.begin is not None:
            raise reader.fail(f"transaction {self.begin[1]} has not committed yet")
        final_lsn = reader.int64("the final LSN")
        reader.int64("the commit timestamp")
        self.begin = (final_lsn, reader.int32("the xid"))

    def _commit(self, reader: _Reader) -> DecodedTransaction:
        self._in_transaction(reader)
        assert self.begin is not None
        final_lsn, xid = self.begin
        reader.int8("the flags")
        commit_lsn = reader.int64("the commit LSN")
        end_lsn = reader.int64("the end LSN")
        reader.int64("the commit timestamp")
        if commit_lsn != final_lsn:
            raise reader.fail(f"commit LSN {commit_lsn:#x} of transaction {xid} is not its Begin's {final_lsn:#x}")
        done = DecodedTransaction(
            xid=xid,
            commit_lsn=commit_lsn,
            end_lsn=end_lsn,
            changed={name: frozenset(ids) for name, ids in self.changed.items()},
            truncated=frozenset(self.truncated),
        )
        self.begin, self.changed, self.truncated = None, {}, set()
        return done

    def _origin(self, reader: _Reader) -> None:
        reader.int64("the origin's commit LSN")
        reader.string("the origin name")

    def _relation(self, reader: _Reader) -> None:
        relation_id, relation = _read_relation(reader)
        self.relations[relation_id] = relation

    def _type(self, reader: _Reader) -> None:
        reader.int32("the type id")
        reader.string("the namespace")
        reader.string("the type name")

    def _message(self, reader: _Reader) -> None:
        reader.int8("the flags")
        reader.int64("the LSN")
        reader.string("the prefix")
        reader.take(reader.unpack("!i", "the content's length"), "the content")

    def _insert(self, reader: _Reader) -> None:
        self._in_transaction(reader)
        reader.int32("the relation id")
        if (marker := reader.byte("the new tuple marker")) != "N":
            raise reader.fail(f"expected the new tuple marker 'N', got {marker!r}")
        _read_tuple(reader)

    def _update(self, reader: _Reader) -> None:
        self._in_transaction(reader)
        relation = self._relation_of(reader)
        marker = reader.byte("the tuple marker")
        ids = []
        if marker in "KO":
            ids.append(self._row_id(reader, relation, _read_tuple(reader)))
            marker = reader.byte("the new tuple marker")
        if marker != "N":
            raise reader.fail(f"expected the tuple marker 'K', 'O' or 'N', got {marker!r}")
        ids.append(self._row_id(reader, relation, _read_tuple(reader)))
        self.changed.setdefault(relation.name, set()).update(ids)

    def _delete(self, reader: _Reader) -> None:
        self._in_transaction(reader)
        relation = self._relation_of(reader)
        if (marker := reader.byte("the old tuple marker")) not in "KO":
            raise reader.fail(f"expected the old tuple marker 'K' or 'O', got {marker!r}")
        self.changed.setdefault(relation.name, set()).add(self._row_id(reader, relation, _read_tuple(reader)))

    def _truncate(self, reader: _Reader) -> None:
        self._in_transaction(reader)
        count = reader.int32("the number of relations")
        reader.int8("the option bits")
        self.truncated.update(self._relation_of(reader).name for _ in range(count))


def decode_transactions(messages: Iterable[bytes]) -> Iterator[DecodedTransaction]:
    """The committed transactions in `messages` (the `data` of `pg_logical_slot_*_binary_changes`), in order.

    One call is one decoding session: Relation messages are sent again at the start of each, so the relation
    ids they map to names are kept only within the call. Anything the protocol does not allow is a
    ChangeCaptureError, as is input that ends inside a transaction (the SQL functions return whole ones).
    """
    decoder = _Decoder()
    for message in messages:
        done = decoder.feed(message)
        if done is not None:
            yield done
    if decoder.begin is not None:
        raise ChangeCaptureError(f"malformed pgoutput stream: transaction {decoder.begin[1]} has no Commit")

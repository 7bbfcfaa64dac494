"""The stored format of a cart record: encoding, decoding, its format tag, and the decoded-cart cache.

One record holds the carts of every customer whose id hashes to its key
(almost always exactly one). It is newline-separated JSON, one line per cart
line, so that a change re-encodes only the line it touches::

    dhtcart-cart 1                                      <- format tag and version
    "alice"                                             <- a customer (a JSON string)
    ["036000291459","50.00",2,false,null,1764577654669] <- item id, price, count, sale,
    ...                                                    expiration, added (ms since epoch)

JSON escapes newlines inside strings, so a line never contains one. Lines
written before the added time was kept have five elements; they read as
``added=None``. A record is decoded in one parse of all its lines; each
decoded :class:`Line` keeps its encoded bytes, which are written back as they
are when another line of the record changes.

>>> lines = Lines()
>>> lines.put(line("sku-1", "2.50", 2, False, None, 1764577654669))
>>> raw = encode({"alice": lines})
>>> raw
b'dhtcart-cart 1\\n"alice"\\n["sku-1","2.50",2,false,null,1764577654669]'
>>> decode(raw)["alice"].get("sku-1").item_count
2
>>> decode(b"dhtcart-cart 9\\n")
Traceback (most recent call last):
...
dhtcart.errors.CorruptData: cart record has an unknown format tag b'dhtcart-cart 9'
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import suppress
from functools import lru_cache
from typing import NamedTuple

from dhtcart.errors import CorruptData

__all__ = ["EMPTY", "FORMAT", "TAG", "Bucket", "DecodedCache", "Line", "Lines", "decode", "encode", "line"]

FORMAT = 1  #: the stored value's format version
TAG = b"dhtcart-cart %d" % FORMAT  #: the first line of every record


class Line(NamedTuple):
    """One stored cart line, decoded, with the bytes it was decoded from (or encoded to)."""

    raw: bytes  #: the line as stored: a JSON array
    item_id: str
    price: str  #: the unit price's exact decimal text, two places
    item_count: int
    sale: bool
    expiration: str | None  #: when the sale price ends, ISO 8601 in UTC
    added: int | None  #: when the item was last added, ms since the epoch (``None``: not recorded)


_SHARE_FROM = 32  #: a copy of at least this many lines shares the fields' dict (a delta records changes)
_DELTA_MAX = 32  #: changes kept beside a shared dict before a copy folds them into a dict of its own


class Lines:
    """One customer's lines, in the order first added: each line's fields, and the bytes stored for it.

    A change works on a :meth:`copy`; :func:`encode` writes every line's
    stored bytes as they are, so only a line that changed is encoded again.

    A Lines is changed only before it is shared: :func:`decode` builds one, a
    change works on a fresh copy, and once cached it is never changed again.
    That lets a copy of a long cart share its fields' dict with the Lines it
    was copied from and record its own changes beside it (at most
    ``_DELTA_MAX``; the next copy then folds them in), so that a change to a
    1,000-line cart copies one dict (the bytes, which :func:`encode` needs)
    instead of two. The bytes' dict is always whole and in order.
    """

    __slots__ = ("_delta", "_lines", "_raw")

    def __init__(self) -> None:
        self._lines: dict[str, Line] = {}  # the fields (shared and never changed while _delta is set)
        self._raw: dict[str, bytes] = {}  # every line's bytes, in order, for encode (always this Lines' own)
        self._delta: dict[str, Line | None] | None = None  # changes over a shared _lines (None: removed)

    def copy(self) -> Lines:
        """A copy to change (the lines themselves are immutable)."""
        other = Lines.__new__(Lines)
        other._raw = self._raw.copy()
        delta = self._delta
        if delta is None and len(other._raw) < _SHARE_FROM:
            other._lines, other._delta = self._lines.copy(), None
        elif delta is None:
            other._lines, other._delta = self._lines, {}
        elif len(delta) < _DELTA_MAX:
            other._lines, other._delta = self._lines, delta.copy()
        else:
            other._lines, other._delta = self._folded(), None
        return other

    def _folded(self) -> dict[str, Line]:
        """The fields' dict with the delta applied: a new dict, in the lines' order."""
        # The delta first, then the dict: another thread's _fold sets the dict, then drops the
        # delta, so a delta read here goes with either dict (applying it twice is harmless),
        # and no delta means the dict read after it is the folded one.
        delta = self._delta
        lines = self._lines.copy()
        for item_id, line in (delta or {}).items():
            if line is None:
                lines.pop(item_id, None)
            else:
                lines[item_id] = line  # a line the delta added was not in _lines: it goes last
        return lines

    def _fold(self) -> None:
        """Apply the delta into a dict of this Lines' own (also on a shared Lines: same lines after)."""
        if self._delta is not None:
            self._lines = self._folded()  # first the whole dict, then the delta dropped: a reader
            self._delta = None  # in between sees the delta over the folded dict, the same lines

    def get(self, item_id: str) -> Line | None:
        """The item's line, or ``None``."""
        delta = self._delta
        if delta and item_id in delta:
            return delta[item_id]
        return self._lines.get(item_id)

    def put(self, line: Line) -> None:
        """Set the line of ``line.item_id`` (in its place if it is there, else last)."""
        item_id = line.item_id
        delta = self._delta
        if delta is None:
            self._lines[item_id] = line
        elif item_id in delta and delta[item_id] is None:  # removed, now back: it goes last
            self._fold()
            self._lines[item_id] = line
        else:
            delta[item_id] = line
        self._raw[item_id] = line.raw

    def pop(self, item_id: str) -> Line | None:
        """Remove the item's line and return it (``None`` if it was not there)."""
        if self._raw.pop(item_id, None) is None:
            return None
        delta = self._delta
        if delta is None:
            return self._lines.pop(item_id)
        old = delta[item_id] if item_id in delta else self._lines[item_id]
        delta[item_id] = None
        return old

    def clear(self) -> None:
        """Remove every line."""
        self._lines, self._raw, self._delta = {}, {}, None

    def __iter__(self) -> Iterator[Line]:
        if self._delta:
            self._fold()
        return iter(self._lines.values())

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"Lines({list(self._raw)!r})"


Bucket = dict[str, Lines]  #: customer id -> lines: one record (never changed once decoded or cached)
EMPTY = Lines()  #: no lines (never changed: copy it to change it)

_quote = json.encoder.encode_basestring_ascii  # C: str -> JSON string


def line(item_id: str, price: str, item_count: int, sale: bool, expiration: str | None, added: int | None) -> Line:
    """A line, encoded: ``json.dumps([item_id, price, item_count, sale, expiration, added])``, compact."""
    raw = (
        f"[{_quote(item_id)},{_quote(price)},{item_count:d},{'true' if sale else 'false'},"
        f"{'null' if expiration is None else _quote(expiration)}{'' if added is None else f',{added:d}'}]"
    ).encode()
    return Line(raw, item_id, price, item_count, sale, expiration, added)


@lru_cache(maxsize=4096)
def _header(customer: str) -> bytes:
    return _quote(customer).encode()


def encode(bucket: Bucket) -> bytes:
    """The record of ``bucket``: the tag, then each customer and its lines' stored bytes."""
    parts = [TAG]
    for customer, lines in bucket.items():
        parts.append(_header(customer))
        parts += lines._raw.values()
    return b"\n".join(parts)


def decode(raw: bytes) -> Bucket:
    """The customers and lines of a record, every line parsed once (one parse for the whole record).

    Raises :class:`~dhtcart.errors.CorruptData` for a record that is not in this format.
    """
    frags = raw.split(b"\n")
    if frags[0] != TAG:
        raise CorruptData(f"cart record has an unknown format tag {frags[0][:32]!r}")
    del frags[0]
    try:
        rows = json.loads(b"[" + b",".join(frags) + b"]")
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise CorruptData(f"cart record is damaged: {exc}") from None
    if len(rows) != len(frags):
        raise CorruptData("cart record is damaged: a line holds more than one value")
    bucket: Bucket = {}
    parsed: dict[str, Line] | None = None
    raws: dict[str, bytes] = {}
    new = tuple.__new__  # a Line from its fields, without the generated __new__'s call (half the cost)
    for row, frag in zip(rows, frags):
        kind = type(row)
        if kind is list and parsed is not None and 5 <= len(row) <= 6:
            parsed[row[0]] = new(Line, (frag, *row) if len(row) == 6 else (frag, *row, None))
            raws[row[0]] = frag
        elif kind is str:
            lines = bucket.get(row)
            if lines is None:
                lines = bucket[row] = Lines()
            parsed, raws = lines._lines, lines._raw
        else:
            raise CorruptData(f"cart record is damaged: unexpected {frag[:40]!r}")
    return bucket


class DecodedCache:
    """The last decoding of recently used records, by key, checked against the stored bytes.

    A hit needs the very bytes the bucket was decoded from (compared, never a
    version alone), so the cache cannot serve stale data; buckets are never
    mutated once cached, so threads may share them. At most ``size`` records,
    the oldest dropped first.
    """

    __slots__ = ("_entries", "size")

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._entries: dict[int, tuple[bytes, Bucket]] = {}

    def decode(self, key: int, raw: bytes) -> Bucket:
        """:func:`decode` ``raw``, the record under ``key``, unless these bytes were decoded last."""
        hit = self._entries.get(key)
        if hit is not None and (hit[0] is raw or hit[0] == raw):
            return hit[1]
        bucket = decode(raw)
        self.remember(key, raw, bucket)
        return bucket

    def remember(self, key: int, raw: bytes, bucket: Bucket) -> None:
        """Keep ``bucket`` as the decoding of ``raw``, the record under ``key``."""
        entries = self._entries
        if len(entries) >= self.size:
            with suppress(KeyError, StopIteration, RuntimeError):  # raced with another thread
                del entries[next(iter(entries))]
        entries[key] = (raw, bucket)

    def __len__(self) -> int:
        return len(self._entries)

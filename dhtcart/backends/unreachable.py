"""A shard that could not be opened: every call raises :class:`~dhtcart.errors.ShardUnavailable`.

A store opens each shard of its membership when it first routes with it. A
shard whose medium cannot be opened (an LMDB directory deleted, a disk lost)
must not stop the store from opening, nor be made again empty: the store
keeps this stand-in in its place, so that every operation that needs the
shard reports it unreachable, exactly as a dead Redis server does. In a store
that keeps several copies of each key, that is what starts a failover
(``docs/replication.md``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from dhtcart.backends.base import Record
from dhtcart.backends.fencing import Change, Entry, FencedBackend, Mark, Pending
from dhtcart.backends.ownership import Ownership
from dhtcart.errors import ShardUnavailable

__all__ = ["UnreachableBackend"]


class UnreachableBackend(FencedBackend):
    """Stands for shard ``name`` at ``url``, which could not be opened (``reason``)."""

    def __init__(self, name: str, url: str, reason: str) -> None:
        self.name = name
        self.url = url
        self.reason = reason
        self.fenced = True

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ShardUnavailable(self.name, self.url, self.reason)

    def get(self, key: int) -> Record | None:
        self._refuse()

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        self._refuse()

    def delete(self, key: int, expected_version: int | None = None) -> bool:
        self._refuse()

    def scan(self, lo: int, hi: int, limit: int | None = None) -> Iterator[tuple[int, Record]]:
        self._refuse()

    def count(self) -> int:
        self._refuse()

    def ownership(self) -> Ownership:
        self._refuse()

    def update_ownership(
        self,
        token: int,
        epoch: int,
        changes: Sequence[Change] = (),
        expect: str | None = None,
        *,
        leased: bool | None = None,
    ) -> Ownership:
        self._refuse()

    def claim(self, ownership: Ownership, *, force: bool = False) -> None:
        self._refuse()

    def import_ranges(
        self, token: int, ranges: Sequence[tuple[int, int]], records: Sequence[tuple[int, Record]]
    ) -> int:
        self._refuse()

    def drop_ranges(self, token: int, ranges: Sequence[tuple[int, int]]) -> int:
        self._refuse()

    def decide(self, key: int, value: bytes | None, expected_version: int | None = None) -> Pending:
        self._refuse()

    def pending(self, key: int) -> Pending | None:
        self._refuse()

    def scan_pending(self, lo: int, hi: int) -> list[Pending]:
        self._refuse()

    def commit(self, key: int, version: int, life: int) -> bool:
        self._refuse()

    def marks(self, ranges: Sequence[tuple[int, int]]) -> dict[int, Mark]:
        self._refuse()

    def import_marks(self, token: int, ranges: Sequence[tuple[int, int]], marks: dict[int, Mark]) -> None:
        self._refuse()

    def repair_entries(self, token: int, entries: Sequence[Entry]) -> int:
        self._refuse()

    def apply(self, primary: str, pending: Pending) -> None:
        self._refuse()

    def renew_lease(self, epoch: int, until: float) -> float:
        self._refuse()

    def lease(self) -> float:
        self._refuse()

    def boundary(self, lo: int, hi: int, n: int) -> tuple[int, int]:
        self._refuse()

    def close(self) -> None:
        """Nothing is open."""

    def destroy(self) -> None:
        self._refuse()

"""The membership document, the lease, and the interface every place that keeps them offers.

See :mod:`dhtcart.membership` for the kinds (in this process, a directory, a
Redis database) and how handles use them.
"""

from __future__ import annotations

import json
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dhtcart.errors import InvalidInput, StoreBusy
from dhtcart.settings import DEFAULT_CLOCK_SKEW, DEFAULT_READ_LEASE, MANIFEST_FORMAT

__all__ = ["FORMAT", "Lease", "Membership", "MembershipDoc", "holder_name"]

#: the membership document's format (1 was dhtcart 0.1's manifest)
FORMAT = MANIFEST_FORMAT


@dataclass(frozen=True)
class MembershipDoc:
    """One version of the membership (see the module doc).

    ``shards`` maps names to backend URLs; ``born`` gives the epoch at which
    each shard joined (a shard removed and added again under the same name is
    a new shard: handles reopen it); ``migration`` is ``None`` or
    ``{"ring": <the new ring>, "drop": [names], "since": epoch}`` (and
    ``"replicas"`` when it changes the number of copies), during which
    ``shards`` lists old and new shards; ``retired`` are shards that left the
    ring and whose data is still to be destroyed.

    Replication (``docs/replication.md``): ``replicas`` copies of every key;
    ``domains`` names the failure domain of shards that have one;
    ``down`` the shards a failover took out (``{name: {"epoch": E,
    "promoted": bool}}``), which keep their place in the ring until the repair
    removes them; ``read_lease`` the seconds a primary serves reads after a
    renewal and ``clock_skew`` the most that two hosts' clocks may differ;
    ``abandoned`` the retired shards that a failover took out: their own
    records were never handed over (they did not answer), so they are emptied
    whatever those records still claim.
    """

    epoch: int
    ring: dict[str, Any]
    shards: dict[str, str]
    born: dict[str, int]
    durability: str
    migration: dict[str, Any] | None = None
    retired: dict[str, str] = field(default_factory=dict)
    replicas: int = 1
    domains: dict[str, str] = field(default_factory=dict)
    down: dict[str, dict[str, Any]] = field(default_factory=dict)
    read_lease: float = DEFAULT_READ_LEASE
    clock_skew: float = DEFAULT_CLOCK_SKEW
    abandoned: list[str] = field(default_factory=list)
    #: dhtcart 0.1's manifest, read but not yet upgraded (the store upgrades it)
    legacy: bool = False

    @property
    def unpromoted(self) -> list[str]:
        """The shards of a failover decided and not carried out (its process may have died), sorted."""
        return sorted(n for n, e in self.down.items() if not e.get("promoted"))

    def next(self, **changes: Any) -> MembershipDoc:
        """The document of the next epoch, with ``changes``."""
        return replace(self, epoch=self.epoch + 1, legacy=False, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "epoch": self.epoch,
            "durability": self.durability,
            "ring": self.ring,
            "shards": self.shards,
            "born": self.born,
            "migration": self.migration,
            "retired": self.retired,
            "replicas": self.replicas,
            "domains": self.domains,
            "down": self.down,
            "read_lease": self.read_lease,
            "clock_skew": self.clock_skew,
            "abandoned": self.abandoned,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> MembershipDoc:
        fmt = data.get("format")
        if fmt == 1:  # dhtcart 0.1: no epoch, a journal instead of a migration
            if data.get("journal"):
                raise StoreBusy(
                    f"{where}: a rebalance of dhtcart 0.1 is unfinished; finish it with that version"
                    " (open the store once), then open it with this one"
                )
            shards = dict(data["shards"])
            return cls(
                0, dict(data["ring"]), shards, dict.fromkeys(shards, 0), data.get("durability", "process"), legacy=True
            )
        if fmt != FORMAT:
            raise InvalidInput("location", f"{where}: unsupported membership format {fmt!r}")
        return cls(
            epoch=int(data["epoch"]),
            ring=dict(data["ring"]),
            shards=dict(data["shards"]),
            born={k: int(v) for k, v in data["born"].items()},
            durability=data.get("durability", "process"),
            migration=data.get("migration"),
            retired=dict(data.get("retired") or {}),
            replicas=int(data.get("replicas", 1)),
            domains=dict(data.get("domains") or {}),
            down={k: dict(v) for k, v in (data.get("down") or {}).items()},
            read_lease=float(data.get("read_lease", DEFAULT_READ_LEASE)),
            clock_skew=float(data.get("clock_skew", DEFAULT_CLOCK_SKEW)),
            abandoned=[str(n) for n in data.get("abandoned") or ()],
        )


class Lease(ABC):
    """The right to change the membership and move data, with its fencing token."""

    token: int
    holder: str

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`~dhtcart.errors.LeaseLost` if the lease is no longer held."""

    @abstractmethod
    def release(self) -> None:
        """Give the lease up. Idempotent."""

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Membership(ABC):
    """Where a store's membership document and lease live."""

    #: where it is, for messages (a directory, a URL with any password masked)
    location: str
    #: the directory relative shard paths are taken in, if any
    base_dir: Path | None = None

    @abstractmethod
    def load(self) -> MembershipDoc | None:
        """The current document, or ``None`` if the store does not exist yet."""

    @abstractmethod
    def create(self, doc: MembershipDoc) -> MembershipDoc:
        """Store ``doc`` as the first document unless one exists; return the one stored."""

    @abstractmethod
    def publish(self, doc: MembershipDoc, lease: Lease) -> None:
        """Replace the document with ``doc`` (whose epoch must be the current one + 1).

        Only while ``lease`` is held; raises :class:`~dhtcart.errors.LeaseLost`
        otherwise, or if another document was published meanwhile.
        """

    @abstractmethod
    def try_lease(self, holder: str) -> Lease | None:
        """Take the rebalance lease now, or return ``None`` if another holds it."""

    def lease_holder(self) -> str | None:
        """Who holds the lease, when that can be told (for ``dhtcart stats``)."""
        return None

    @abstractmethod
    def report_progress(self, epoch: int, moved: int, planned: int) -> None:
        """Tell every handle how far the migration of ``epoch`` has gone (best effort: not durable)."""

    @abstractmethod
    def progress(self) -> tuple[int, int, int] | None:
        """``(epoch, keys moved, keys planned)`` of the last report, or ``None``."""

    def watch(self, callback: Callable[[MembershipDoc], None]) -> bool:
        """Call ``callback`` with every document published from now on, if this kind can push them.

        Returns whether it can: a membership kept in etcd pushes each epoch to
        every handle; the others return ``False`` and handles learn a new epoch
        from a shard's redirect. A pushed document is advice, never the truth:
        the shards' own records are, so a late or lost push costs a redirect.
        """
        return False

    @property
    def watching(self) -> bool | None:
        """Whether a watch is live (``None`` for kinds that cannot watch), for ``dhtcart stats``."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the membership holds open. Idempotent."""


def holder_name() -> str:
    """``pid@host``: who takes a lease, for messages."""
    return f"{os.getpid()}@{socket.gethostname()}"

"""A membership that lives in this process: ``DHTServerStore(shards=5)``."""

from __future__ import annotations

import threading

from dhtcart.errors import LeaseLost
from dhtcart.membership.base import Lease, Membership, MembershipDoc

__all__ = ["LocalMembership"]


class _LocalLease(Lease):
    def __init__(self, owner: LocalMembership, token: int, holder: str) -> None:
        self._owner = owner
        self.token = token
        self.holder = holder
        self._held = True

    def check(self) -> None:
        if not self._held:
            raise LeaseLost("the lease was released")

    def release(self) -> None:
        if self._held:
            self._held = False
            self._owner._lock.release()


class LocalMembership(Membership):
    """The document of a store that lives in one process."""

    def __init__(self) -> None:
        self.location = "memory"
        self._doc: MembershipDoc | None = None
        self._lock = threading.Lock()
        self._tokens = 0
        self._holder: str | None = None

    def load(self) -> MembershipDoc | None:
        return self._doc

    def create(self, doc: MembershipDoc) -> MembershipDoc:
        if self._doc is None:
            self._doc = doc
        return self._doc

    def publish(self, doc: MembershipDoc, lease: Lease) -> None:
        lease.check()
        current = self._doc
        if current is None or doc.epoch != current.epoch + 1:
            raise LeaseLost(f"membership epoch {doc.epoch} does not follow {current and current.epoch}")
        self._doc = doc

    def try_lease(self, holder: str) -> Lease | None:
        if not self._lock.acquire(blocking=False):
            return None
        self._tokens += 1
        self._holder = holder
        return _LocalLease(self, self._tokens, holder)

    def lease_holder(self) -> str | None:
        return self._holder if self._lock.locked() else None

    def report_progress(self, epoch: int, moved: int, planned: int) -> None:
        self._progress = (epoch, moved, planned)

    def progress(self) -> tuple[int, int, int] | None:
        return getattr(self, "_progress", None)

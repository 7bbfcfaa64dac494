"""The decisions of a replicated write and read, without I/O (``docs/replication.md``).

In the manner of h11, the protocol is a state machine that is *told* what
happened and *says* what to do next; it never touches a shard, a clock or a
membership. The store's synchronous code drives it
(:meth:`dhtcart.store.DHTServerStore._complete`), an asyncio driver can drive
the same object, and the tests drive it step by step.

A replicated write is decided on the key's primary (the store's routing does
that: redirects, waits, :class:`~dhtcart.errors.WriteInFlight`), then
*completed* by a :class:`Completion`::

    >>> from dhtcart.backends.fencing import Pending
    >>> done = Completion("p", Pending(7, 0, 1, b"v", "b1@1,b2@1"))
    >>> done.next()
    Apply(primary='p', backups=('b1', 'b2'))
    >>> done.applied({"b1": OK, "b2": OK})
    >>> done.next()
    Commit(primary='p')
    >>> done.committed()
    >>> done.next()
    Done()

When a backup does not answer, the completion asks for a failover, then for
the primary's pending write again (the backups its record lists now); when a
backup refuses (it was pointed at another primary), it asks whether the
primary was taken out: then the write's outcome is unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dhtcart.backends.fencing import Pending
from dhtcart.backends.ownership import split_peers

__all__ = [
    "MOVED",
    "OK",
    "STALE",
    "UNREACHABLE",
    "Apply",
    "Commit",
    "Completion",
    "Done",
    "Failover",
    "Refresh",
    "Reread",
    "Unknown",
    "after_unreachable",
    "renewal",
]

#: what a backup did with an apply
OK = "ok"
MOVED = "moved"  #: it refused: it keeps the key for another primary, or not at all
UNREACHABLE = "unreachable"  #: it did not answer
STALE = "stale"  #: this handle does not know the shard the primary's record names (its view is older)


@dataclass(frozen=True)
class Apply:
    """Send the pending write to these backups (together: they do not depend on each other)."""

    primary: str
    backups: tuple[str, ...]


@dataclass(frozen=True)
class Commit:
    """Commit the pending write on the primary."""

    primary: str


@dataclass(frozen=True)
class Failover:
    """Have these shards taken out of the replica sets of their keys (they did not answer)."""

    shards: tuple[str, ...]


@dataclass(frozen=True)
class Reread:
    """Ask the primary for its pending write of the key again (the backups it lists now)."""

    primary: str


@dataclass(frozen=True)
class Refresh:
    """Reload the membership, then say whether the primary is still a member (:meth:`Completion.refreshed`)."""


@dataclass(frozen=True)
class Done:
    """The write is complete: acknowledged (by this handle, or finished by another)."""


@dataclass(frozen=True)
class Unknown:
    """Stop: the write may or may not stand (``reason``); the caller says so, and tries nothing again."""

    reason: str


Step = Apply | Commit | Failover | Reread | Refresh | Done | Unknown


class Completion:
    """Completes one write that ``primary`` decided (``pending``): apply at every backup, commit.

    Call :meth:`next` for what to do, do it, then tell the outcome with the
    matching method (:meth:`applied`, :meth:`committed`, :meth:`commit_failed`,
    :meth:`failed_over`, :meth:`reread`, :meth:`refreshed`).
    """

    def __init__(self, primary: str, pending: Pending) -> None:
        self.primary = primary
        self.pending = pending
        self._fresh: Pending | None = None
        self._step: Step = self._apply_step()

    def _apply_step(self) -> Step:
        return Apply(self.primary, tuple(name for name, _ in split_peers(self.pending.backups)))

    def backup_born(self, name: str) -> int:
        """The incarnation of backup ``name`` the primary's record names (the driver checks its view has it)."""
        return dict(split_peers(self.pending.backups)).get(name, -1)

    def next(self) -> Step:
        """What to do now."""
        return self._step

    def applied(self, outcomes: Mapping[str, str]) -> None:
        """Each backup's outcome of the :class:`Apply` (``OK``, ``MOVED``, ``UNREACHABLE``, ``STALE``)."""
        assert isinstance(self._step, Apply)
        down = tuple(n for n in self._step.backups if outcomes.get(n) == UNREACHABLE)
        refused = any(outcomes.get(n) in (MOVED, STALE) for n in self._step.backups)
        if down:
            self._step = Failover(down)
        elif refused:
            self._step = Reread(self.primary)
        else:
            self._step = Commit(self.primary)

    def committed(self) -> None:
        """The primary committed it (or had it committed already, by a handle that finished it)."""
        self._step = Done()

    def commit_failed(self) -> None:
        """The primary did not answer the commit: every backup holds the write, so it most likely stands."""
        self._step = Unknown("the primary stopped answering before the commit (the write is on every backup)")

    def failed_over(self) -> None:
        """The failover ran (or was not needed): read the primary's pending write again."""
        self._step = Reread(self.primary)

    def reread(self, fresh: Pending | None, *, answered: bool = True) -> None:
        """The primary's pending write of the key now (``answered=False``: it did not answer)."""
        if not answered:
            self._step = Unknown("the primary stopped answering while the write was in flight")
            return
        self._fresh = fresh
        self._step = Refresh()

    def refreshed(self, *, primary_is_member: bool) -> None:
        """After reloading the membership: is the primary still a live member of the store?"""
        if not primary_is_member:
            self._step = Unknown("the primary was taken out while the write was in flight")
            return
        fresh = self._fresh
        if fresh is None or fresh.stamp != self.pending.stamp:
            self._step = Done()  # another handle (a migration, the key's next writer) finished it
            return
        self.pending = fresh  # the backups the primary's record lists now
        self._step = self._apply_step()


def after_unreachable(*, replicated: bool, write: bool, unknown: bool, member: bool) -> str:
    """What an operation does when its shard did not answer: ``"raise"``, ``"route"`` (route
    again: the shard left the membership) or ``"failover"`` (have it taken out, then route again).

    A write whose request may have reached the shard (``unknown``) is never sent again: it
    could apply twice. With one copy per key there is no failover: the shard's keys are
    unavailable until it answers.
    """
    if write and unknown:
        return "raise"
    if replicated:
        return "failover"
    return "raise" if member else "route"


def renewal(
    *, shards: Mapping[str, int], down: Mapping[str, object], name: str, born: int, started: float, lease: float
) -> float | None:
    """The end of the lease a handle may give shard ``name`` (incarnation ``born``), or ``None``.

    ``shards`` (name to born) and ``down`` are from a membership read that
    began at ``started`` (seconds since the epoch): the lease runs at most
    ``lease`` from that moment, and only for a member that is not down.
    """
    if shards.get(name) != born or name in down:
        return None
    return started + lease

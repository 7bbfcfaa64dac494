"""Who is in the ring: the shared membership document, its epoch, and the rebalance lease.

The members, their backend URLs, the ring and any migration in progress are one
:class:`MembershipDoc` whose ``epoch`` grows by one at every change. Every
handle of a store (in any process, on any host) routes with a cached copy and
reloads it when a shard's redirect says it is stale. Several places keep it,
behind one small interface, :class:`Membership`:

:class:`~dhtcart.membership.local.LocalMembership`
    in this process only (``DHTServerStore(shards=5)``, ``memory://``);
:class:`~dhtcart.membership.directory.DirectoryMembership`
    ``manifest.json`` in the store's directory (processes of one host). The
    lease is an exclusive ``flock`` on ``ADMIN``: the kernel drops it the
    moment its holder dies;
:class:`~dhtcart.membership.redis.RedisMembership`
    keys in a Redis database (clients on any host start from its URL). The
    lease is a key with an expiry, renewed by its holder every third of its
    time to live; a holder that dies loses it within ``lease_ttl`` seconds;
:class:`~dhtcart.membership.etcd.EtcdMembership`
    keys in an etcd cluster (``etcd://h1:2379,h2:2379,h3:2379/prefix``): no
    single host's loss stops a rebalance. The lease is an etcd lease kept
    alive by its holder, its fencing token the revision that created it; a
    watch pushes every new document to every handle as it is published.

Leases carry a **fencing token** that grows with every acquisition; shards
refuse ownership changes and copies from a token older than the newest they
have seen, so a rebalancer whose lease expired (paused, partitioned) can
change nothing once a successor has started.

A new document is published only by the lease holder and only on top of the
epoch it read (compare-and-set), so two writers never interleave.

>>> m = LocalMembership()
>>> m.load() is None
True
>>> doc = m.create(MembershipDoc(1, {"type": "partition"}, {"a": "memory://"}, {"a": 1}, "process"))
>>> lease = m.try_lease("me")
>>> m.publish(doc.next(shards={"a": "memory://", "b": "memory://"}), lease)
>>> m.load().epoch, sorted(m.load().shards)
(2, ['a', 'b'])
>>> m.try_lease("another") is None     # one rebalancer at a time
True
>>> lease.release()

Where a store is, is one **location**, the same string for the library
(``DHTServerStore.open``, ``CartService.open``), ``--data`` and
``DHTCART_DATA``; :func:`parse_location` reads it:

>>> parse_location("lmdb:///srv/carts")
Location(kind='directory', target='/srv/carts', options={})
>>> parse_location("./carts").kind, parse_location("memory://").kind
('directory', 'memory')
>>> parse_location("etcd://10.0.0.1:2379,10.0.0.2:2379/carts").kind
'etcd'
>>> parse_location("http://example.com/store")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
dhtcart.errors.InvalidInput: location: unknown scheme 'http' in 'http://example.com/store'; a store's location is ...
"""

from __future__ import annotations

import os

from dhtcart.locations import LOCATION_FORMS, Location, is_url, parse_location
from dhtcart.membership.base import FORMAT, Lease, Membership, MembershipDoc, holder_name
from dhtcart.membership.directory import DirectoryMembership
from dhtcart.membership.local import LocalMembership
from dhtcart.settings import DEFAULT_LEASE_TTL

__all__ = [
    "DEFAULT_LEASE_TTL",
    "FORMAT",
    "LOCATION_FORMS",
    "DirectoryMembership",
    "EtcdMembership",
    "Lease",
    "LocalMembership",
    "Location",
    "Membership",
    "MembershipDoc",
    "RedisMembership",
    "holder_name",
    "is_url",
    "open_membership",
    "parse_location",
]


def open_membership(location: str | os.PathLike[str] | Location, *, lease_ttl: float = DEFAULT_LEASE_TTL) -> Membership:
    """The membership at ``location`` (see :func:`parse_location`)."""
    loc = location if isinstance(location, Location) else parse_location(location)
    if loc.kind == "memory":
        return LocalMembership()
    if loc.kind == "directory":
        return DirectoryMembership(loc.target)
    if loc.kind == "etcd":
        from dhtcart.membership.etcd import EtcdMembership  # the [etcd] extra

        return EtcdMembership(loc.target, lease_ttl=lease_ttl)
    from dhtcart.membership.redis import RedisMembership  # the [redis] extra

    return RedisMembership(loc.target, lease_ttl=lease_ttl)


def __getattr__(name: str) -> object:
    # RedisMembership needs the [redis] extra: imported only when asked for
    if name == "RedisMembership":
        from dhtcart.membership.redis import RedisMembership

        return RedisMembership
    if name == "EtcdMembership":  # the [etcd] extra, likewise
        from dhtcart.membership.etcd import EtcdMembership

        return EtcdMembership
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from dhtcart.errors import InvalidInput
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

#: the forms a store's location takes, for messages
LOCATION_FORMS = (
    "a directory path, lmdb://PATH, memory://, redis://host:port/db, rediss://host:port/db,"
    " etcd://host:port[,host:port...]/prefix or etcds://host:port[,host:port...]/prefix"
)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_DB_SCHEMES = ("redis", "rediss")
_ETCD_SCHEMES = ("etcd", "etcds")


@dataclass(frozen=True)
class Location:
    """Where a store is: ``kind`` is ``"directory"``, ``"memory"``, ``"etcd"`` (``etcd://``
    and ``etcds://``) or the scheme of a Redis membership (``"redis"``, ``"rediss"``);
    ``target`` the directory or URL;
    ``options`` what the location's query says (``durability`` for a directory)."""

    kind: str
    target: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def shared(self) -> bool:
        """Whether other handles than this one's can open the store (not ``memory://``)."""
        return self.kind != "memory"

    @property
    def is_database(self) -> bool:
        """Whether the membership lives in a database (clients on any host), not a directory."""
        return self.kind not in ("directory", "memory")


def parse_location(location: str | os.PathLike[str]) -> Location:
    """Read a store's location (see the module doc); any other scheme is :class:`InvalidInput`.

    ``lmdb:///abs/dir`` and ``lmdb://rel/dir`` name a directory store (an
    optional ``?durability=process|power`` is the durability of a new store);
    ``memory://`` a store in this process; ``redis://`` and ``rediss://`` a
    membership kept in a Redis database; ``etcd://`` and ``etcds://`` (TLS)
    one kept in an etcd cluster (see :func:`~dhtcart.membership.etcd.parse_etcd_url`;
    a malformed one is refused here); anything else without a scheme is a
    directory path.
    """
    if not isinstance(location, str | os.PathLike):
        raise InvalidInput("location", f"must be a path or URL string, not {type(location).__name__}")
    text = os.fspath(location)
    if not isinstance(text, str):
        raise InvalidInput("location", "must be a str path, not bytes")
    if not text.strip():
        raise InvalidInput("location", f"is empty; use {LOCATION_FORMS}")
    match = _SCHEME.match(text)
    if match is None:
        return Location("directory", text)
    scheme = match.group(1).lower()
    rest = text[match.end() :]
    if scheme == "memory":
        if rest.strip("/"):
            raise InvalidInput("location", f"memory:// takes no path or options, got {text!r}")
        return Location("memory", "memory://")
    if scheme == "lmdb":
        path, _, query = rest.partition("?")
        if not path:
            raise InvalidInput(
                "location", f"{text!r} names no directory: use lmdb:///absolute/dir or lmdb://relative/dir"
            )
        try:
            pairs = dict(parse_qsl(query, strict_parsing=True)) if query else {}
        except ValueError:
            raise InvalidInput("location", f"malformed query in {text!r}") from None
        unknown = sorted(set(pairs) - {"durability"})
        if unknown:
            raise InvalidInput("location", f"unknown option {unknown[0]!r} in {text!r} (known: durability)")
        if pairs.get("durability", "process") not in ("process", "power"):
            raise InvalidInput("location", f"durability must be 'process' or 'power', got {pairs['durability']!r}")
        return Location("directory", path, pairs)
    if scheme in _DB_SCHEMES:
        return Location(scheme, text)
    if scheme in _ETCD_SCHEMES:
        from dhtcart.membership.etcd import parse_etcd_url  # imports no client library

        parse_etcd_url(text)  # a malformed URL is refused here, naming the accepted forms
        return Location("etcd", text)
    raise InvalidInput("location", f"unknown scheme {scheme!r} in {text!r}; a store's location is {LOCATION_FORMS}")


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a membership database (not a directory, not ``memory://``)."""
    return parse_location(location).is_database


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

"""Where a store is: the grammar of its location, read the same way by the library, the command line and the app.

A leaf module (it imports nothing of dhtcart but :mod:`dhtcart.errors`), so
that :mod:`dhtcart.settings` can check a location and :mod:`dhtcart.membership`
can open one without either importing the other:

>>> parse_location("lmdb:///srv/carts?durability=power")
Location(kind='directory', target='/srv/carts', options={'durability': 'power'})
>>> parse_location("carts").kind, parse_location("memory://").kind, parse_location("redis://h:6379/0").kind
('directory', 'memory', 'redis')
>>> parse_location("http://shop/carts")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
dhtcart.errors.InvalidInput: location: unknown scheme 'http' in 'http://shop/carts'; a store's location is ...

The two constants of an etcd location (its per-request timeout when the URL
gives none, and the variable its password is read from, never the URL) are
defined here, with the grammar that uses them; :mod:`dhtcart.settings` lists
them with every other setting.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from dhtcart.errors import InvalidInput

__all__ = [
    "DEFAULT_ETCD_TIMEOUT",
    "ETCD_FORMS",
    "ETCD_PASSWORD_ENV",
    "LOCATION_FORMS",
    "EtcdURL",
    "Location",
    "is_url",
    "parse_etcd_url",
    "parse_location",
]

#: seconds one request to an etcd member may take before the next endpoint is tried
DEFAULT_ETCD_TIMEOUT = 2.0
#: the variable an etcd-kept membership reads its password from (a password in a URL is refused)
ETCD_PASSWORD_ENV = "DHTCART_ETCD_PASSWORD"

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
    one kept in an etcd cluster (see :func:`parse_etcd_url`;
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
        parse_etcd_url(text)  # a malformed URL is refused here, naming the accepted forms
        return Location("etcd", text)
    raise InvalidInput("location", f"unknown scheme {scheme!r} in {text!r}; a store's location is {LOCATION_FORMS}")


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a membership database (not a directory, not ``memory://``)."""
    return parse_location(location).is_database


# -- an etcd location ------------------------------------------------------------------------

#: the forms an etcd location takes, for messages
ETCD_FORMS = "etcd://host:port[,host:port...]/prefix or etcds://... (TLS)"

DEFAULT_ETCD_PORT = 2379
DEFAULT_ETCD_PREFIX = "/dhtcart"
_HOST = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::(?P<port>[0-9]{1,5}))?$")
_PREFIX = re.compile(r"^[A-Za-z0-9._~/-]*$")
_USER = re.compile(r"^[A-Za-z0-9._~-]+$")


@dataclass(frozen=True)
class EtcdURL:
    """An etcd location, parsed: ``endpoints`` (host, port), the key ``prefix``, ``tls``, an optional ``user``
    and the per-request ``timeout`` in seconds."""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str
    tls: bool = False
    user: str | None = None
    timeout: float = DEFAULT_ETCD_TIMEOUT

    @property
    def display(self) -> str:
        """The location as messages and ``store.location`` show it (no password: there never is one)."""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.endpoints)
        user = f"{self.user}@" if self.user else ""
        query = "" if self.timeout == DEFAULT_ETCD_TIMEOUT else f"?timeout={self.timeout:g}"
        return f"{'etcds' if self.tls else 'etcd'}://{user}{hosts}{self.prefix}{query}"


def _bad(url: str, why: str) -> InvalidInput:
    return InvalidInput("location", f"{why} in {url!r}; an etcd location is {ETCD_FORMS}")


def parse_etcd_url(url: str) -> EtcdURL:
    """Read ``etcd://[user@]host[:port][,host[:port]...][/prefix][?timeout=SECONDS]`` (``etcds://``: TLS).

    The port defaults to 2379 and the prefix to ``/dhtcart``. A password is
    refused here: give it in ``DHTCART_ETCD_PASSWORD``. Imports no client
    library, so a malformed location is reported without the ``[etcd]`` extra.

    >>> parse_etcd_url("etcd://10.0.0.1,10.0.0.2:2380/carts")
    EtcdURL(endpoints=(('10.0.0.1', 2379), ('10.0.0.2', 2380)), prefix='/carts', tls=False, user=None, timeout=2.0)
    >>> parse_etcd_url("etcd://h:2379/carts?timeout=0.5").display
    'etcd://h:2379/carts?timeout=0.5'
    >>> parse_etcd_url("etcd://h:99999/carts")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dhtcart.errors.InvalidInput: location: port 99999 is not in 1..65535 in 'etcd://h:99999/carts'; ...
    """
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    scheme = match.group(1).lower() if match else ""
    if scheme not in _ETCD_SCHEMES:
        raise _bad(url, "not an etcd:// or etcds:// URL")
    rest = url[match.end() :] if match else url
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    user: str | None = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        if ":" in userinfo:
            raise _bad(url, f"a password in a URL shows in ps and shell histories: set {ETCD_PASSWORD_ENV} instead")
        user = unquote(userinfo)
        if not _USER.match(user):
            raise _bad(url, f"user name {user!r} is not letters, digits, '.', '_', '~' or '-'")
    if not netloc:
        raise _bad(url, "no endpoint")
    endpoints: list[tuple[str, int]] = []
    for part in netloc.split(","):
        found = _HOST.match(part.strip())
        if found is None:
            raise _bad(url, f"endpoint {part!r} is not host, host:port or [ipv6]:port")
        host = found.group("v6") or found.group("name")
        port = int(found.group("port") or DEFAULT_ETCD_PORT)
        if not 1 <= port <= 65535:
            raise _bad(url, f"port {port} is not in 1..65535")
        if (host, port) not in endpoints:
            endpoints.append((host, port))
    prefix = "/" + path.strip("/") if slash and path.strip("/") else DEFAULT_ETCD_PREFIX
    if not _PREFIX.match(prefix) or "//" in prefix:
        raise _bad(url, f"prefix {prefix!r} is not letters, digits and '.', '_', '~', '-', '/'")
    timeout = DEFAULT_ETCD_TIMEOUT
    try:
        options = dict(parse_qsl(query, strict_parsing=True)) if query else {}
    except ValueError:
        raise _bad(url, "malformed query") from None
    for name, value in options.items():
        if name != "timeout":
            raise _bad(url, f"unknown option {name!r} (known: timeout)")
        try:
            timeout = float(value)
        except ValueError:
            raise _bad(url, f"timeout must be a number of seconds, got {value!r}") from None
        if not 0 < timeout <= 60 or math.isnan(timeout):
            raise _bad(url, f"timeout must be more than 0 and at most 60 seconds, got {value!r}")
    return EtcdURL(tuple(endpoints), prefix, scheme == "etcds", user, timeout)

"""Storage backends, chosen by URL.

==========================  ============================================
URL                         backend
==========================  ============================================
``memory://``               :class:`~dhtcart.backends.memory.MemoryBackend`
``lmdb:///path/to/dir``     :class:`~dhtcart.backends.lmdb.LMDBBackend`
``redis://host:port/db``    ``dhtcart.backends.redis.RedisBackend`` (extra ``[redis]``)
==========================  ============================================

Third parties register more schemes in the ``dhtcart.backends`` entry-point
group: the name is the URL scheme, the object a class with a
``from_url(url, *, context=None, **options)`` class method returning a
:class:`Backend` (``context`` is the :class:`BackendContext` a store passes:
the shard's name, the store's directory, durability and whether to fence)::

    [project.entry-points."dhtcart.backends"]
    mystore = "mypkg.backend:MyBackend"
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from dhtcart.backends.base import Backend, BackendContext, Record
from dhtcart.errors import InvalidInput

__all__ = ["Backend", "BackendContext", "Record", "backend_schemes", "open_backend"]

ENTRY_POINT_GROUP = "dhtcart.backends"

# Used when dhtcart runs from a source tree that was never installed, so its
# own entry points are not registered; installed entry points take precedence.
_BUILTIN = {
    "memory": "dhtcart.backends.memory:MemoryBackend",
    "lmdb": "dhtcart.backends.lmdb:LMDBBackend",
    "redis": "dhtcart.backends.redis:RedisBackend",
    "rediss": "dhtcart.backends.redis:RedisBackend",
}


def backend_schemes() -> list[str]:
    """Return the URL schemes that :func:`open_backend` understands."""
    names = set(_BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


_FOUND: dict[tuple[object, str], Any] = {}  # (the lookup, scheme) -> the factory an entry point gave


def _load(scheme: str) -> Any:
    """The factory of ``scheme``, looked up once per process (errors are not kept)."""
    # A lookup scans the installed entry points, which reads every installed distribution's
    # metadata (~8 ms); every handle opens a shard whenever one joins the membership.
    key = (entry_points, scheme)  # the function too: a test may replace it
    found = _FOUND.get(key)
    if found is None:
        found = _FOUND[key] = _find(scheme)
    return found


def _find(scheme: str) -> Any:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == scheme:
            return ep.load()
    target = _BUILTIN.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in backend_schemes())
        raise InvalidInput("url", f"unknown backend URL scheme {scheme!r}; known: {known}")
    module, _, attr = target.partition(":")
    try:
        return getattr(import_module(module), attr)
    except ImportError as exc:  # an optional extra is missing
        raise ImportError(
            f"the {scheme}:// backend needs an optional dependency ({exc.name}):"
            f' pip install "dhtcart[{scheme.rstrip("s")}]"'
        ) from exc


def open_backend(url: str, *, context: BackendContext | None = None, **options: Any) -> Backend:
    """Open the backend that ``url`` names (``context``: what a store tells its shards).

    Only the backend's own module parses its URL. A scheme is looked up once per
    process, among the installed ``dhtcart.backends`` entry points first, then
    dhtcart's own; a plugin installed while a process runs is not seen for a
    scheme that process has opened already (the next process sees it).

    >>> b = open_backend("memory://")
    >>> b.put(7, b"x")
    1
    >>> b.get(7)
    Record(version=1, value=b'x')
    """
    if not isinstance(url, str):
        raise InvalidInput("url", f"a backend URL must be a str, not {type(url).__name__}")
    scheme = urlsplit(url).scheme
    if not scheme:
        raise InvalidInput("url", f"backend URL {url!r} has no scheme (memory://, lmdb:///dir, ...)")
    factory = _load(scheme)
    if context is not None:
        options["context"] = context
    backend: Backend = factory.from_url(url, **options)
    return backend

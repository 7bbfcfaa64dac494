"""A backend with a planted bug, for showing that ``dhtcart verify`` catches it (not shipped, not a test module).

``buggy:///abs/dir?bug=stale-read&rate=0.05`` is an LMDB shard in ``dir`` (so
several processes share it) with a cache per process of the last record this
process saw of each key, and one bug:

``bug=stale-read``
    With probability ``rate``, a read returns the cached copy even though the
    stored record has moved on: a stale read, as a replica or a cache that
    missed an invalidation would serve.
``bug=stale-cas``
    With probability ``rate``, a compare-and-set that should fail (the stored
    version is not the expected one) is checked against the cached copy
    instead and, if that matches, goes through: it writes version
    ``expected + 1`` over the newer record, as a compare against a stale
    replica would.

It is registered like any third-party backend, through the
``dhtcart.backends`` entry-point group: :func:`plugin_path` writes a
``*.dist-info`` directory declaring it, to put on ``PYTHONPATH``.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dhtcart.backends.base import BackendContext, Record
from dhtcart.backends.lmdb import LMDBBackend
from dhtcart.errors import InvalidInput, VersionConflict

BUGS = ("stale-read", "stale-cas")


class BuggyBackend(LMDBBackend):
    """An LMDB shard that, with probability ``rate``, serves ``bug`` (see the module docstring).

    Everything else (ownership fences included) is LMDB's own: the bug is the
    only difference, as a third-party backend's bug would be.
    """

    def __init__(self, path: str, *, bug: str, rate: float, seed: int | None = None, fenced: bool = False) -> None:
        if bug not in BUGS:
            raise InvalidInput("bug", f"one of {', '.join(BUGS)}, not {bug!r}")
        super().__init__(path, fenced=fenced)
        self.bug = bug
        self.rate = rate
        self.url = f"buggy://{self.path}?bug={bug}&rate={rate}"
        self._rng = random.Random(seed)
        self._seen: dict[int, Record] = {}
        self._bug_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext | None = None, **options: Any) -> BuggyBackend:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return cls(
            parts.path,
            bug=query.get("bug", "stale-read"),
            rate=float(query.get("rate", "0.05")),
            seed=int(query["seed"]) if "seed" in query else None,
            fenced=context is not None and context.fenced,
        )

    def _unlucky(self) -> bool:
        with self._bug_lock:
            return self._rng.random() < self.rate

    def get(self, key: int) -> Record | None:
        current = super().get(key)
        cached = self._seen.get(key)
        if self.bug == "stale-read" and cached is not None and cached != current and self._unlucky():
            return cached  # the bug: a copy this process saw earlier
        if current is not None:
            self._seen[key] = current
        else:
            self._seen.pop(key, None)
        return current

    def _overwrite(self, key: int, record: Record) -> None:
        """Write ``record`` as it is, over whatever is stored (the bug's blind write)."""
        raw = record.version.to_bytes(8, "big") + record.value
        self._write(lambda txn: txn.put(key.to_bytes(8, "big"), raw))

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        try:
            version = super().put(key, value, expected_version)
        except VersionConflict:
            cached = self._seen.get(key)
            stale = cached.version if cached is not None else 0
            if self.bug != "stale-cas" or stale != expected_version or not self._unlucky():
                raise
            version = stale + 1  # the bug: compared with the stale copy, and written over the newer record
            self._overwrite(key, Record(version, value))
        self._seen[key] = Record(version, value)
        return version

    def delete(self, key: int, expected_version: int | None = None) -> bool:
        self._seen.pop(key, None)
        return super().delete(key, expected_version)


def plugin_path(directory: Path) -> Path:
    """Write a ``dhtcart_buggy`` distribution's metadata into ``directory``; return it, for ``PYTHONPATH``.

    ``importlib.metadata`` finds ``*.dist-info`` directories on ``sys.path``,
    which is how an installed plugin's entry points are found.
    """
    info = directory / "dhtcart_buggy-0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dhtcart-buggy\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[dhtcart.backends]\nbuggy = tests.buggy_backend:BuggyBackend\n")
    return directory

"""Loaded by every Python process started with this directory on PYTHONPATH (site's hook).

With ``DHTCART_TEST_FULL_DISK=FILE``, every LMDB shard's ``put`` reads FILE
first: ``full`` makes it raise :class:`~dhtcart.errors.ShardFull`, as the LMDB
backend does for a disk or map with no room; ``bug`` makes it raise a plain
``RuntimeError``, as a medium exception that escaped the backend would (what
``lmdb.DiskError`` did before ``ShardFull``); anything else, or no file,
writes normally. Reads are untouched. Used by ``test_http_store_errors.py``
to drive a real ``dhtcart serve`` (the real full disk is the LMDB backend's
own test).
"""

import os

_FLAG = os.environ.get("DHTCART_TEST_FULL_DISK")

if _FLAG:
    from dhtcart.backends.lmdb import LMDBBackend
    from dhtcart.errors import ShardFull

    _real_put = LMDBBackend.put
    _real_modify = LMDBBackend.modify

    def _fault(self: LMDBBackend) -> None:
        try:
            with open(_FLAG) as f:
                mode = f.read().strip()
        except FileNotFoundError:
            mode = ""
        if mode == "full":
            raise ShardFull(os.path.basename(self.path), self.url, "MDB_MAP_FULL: no space left on device (simulated)")
        if mode == "bug":
            raise RuntimeError("a medium exception that escaped the backend (simulated)")

    def _put(self: LMDBBackend, key: int, value: bytes, expected_version: int | None = None) -> int:
        _fault(self)
        return _real_put(self, key, value, expected_version)

    def _modify(self: LMDBBackend, key: int, change: object, tries: int = 1) -> object:  # the cart's writes
        _fault(self)
        return _real_modify(self, key, change, tries)  # type: ignore[arg-type]

    LMDBBackend.put = _put  # type: ignore[method-assign]
    LMDBBackend.modify = _modify  # type: ignore[assignment, method-assign]

"""A small writer-preferring readers-writer lock (threads of one process)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["RWLock"]


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers.

    The store's operations are the readers; a rebalance takes the write side
    for one batch at a time, so an operation waits at most one batch. The
    reader's path is one uncontended mutex acquire and release when no writer
    is around.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writing = False  # a writer holds the lock or waits for it

    def acquire_read(self) -> None:
        mutex = self._mutex
        mutex.acquire()
        try:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        finally:
            mutex.release()

    def release_read(self) -> None:
        mutex = self._mutex
        mutex.acquire()
        try:
            self._readers -= 1
            if self._writing and not self._readers:
                self._cond.notify_all()
        finally:
            mutex.release()

    def acquire_write(self) -> None:
        with self._cond:
            while self._writing:  # one writer at a time
                self._cond.wait()
            self._writing = True  # from now on new readers wait
            while self._readers:
                self._cond.wait()

    def release_write(self) -> None:
        with self._cond:
            self._writing = False
            self._cond.notify_all()

    @contextmanager
    def read(self) -> Iterator[None]:
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextmanager
    def write(self) -> Iterator[None]:
        self.acquire_write()
        try:
            yield
        finally:
            self.release_write()

"""A small readers-writer lock (threads of one process), fair to both sides."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["RWLock"]


class RWLock:
    """Many readers or one writer.

    A waiting writer stops new readers from entering (so a rebalance is not
    starved), and when a writer leaves, the readers that waited for it go in
    before the next writer (so operations are not starved by a rebalance that
    takes the write side batch after batch). The store's operations are the
    readers; a rebalance holds the write side for one batch at a time, so an
    operation waits for at most about one batch. When no writer is around, a
    reader costs one uncontended mutex acquire and release.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0  # readers inside
        self._writing = False  # a writer is inside or waiting for the readers to leave
        self._readers_waiting = 0  # readers blocked by the current writer
        self._readers_turn = False  # the last writer left: the waiting readers go first

    def acquire_read(self) -> None:
        mutex = self._mutex
        mutex.acquire()
        try:
            if self._writing:
                self._readers_waiting += 1
                try:
                    while self._writing:
                        self._cond.wait()
                finally:  # also when the wait is interrupted (KeyboardInterrupt)
                    self._readers_waiting -= 1
                    if not self._readers_waiting and self._readers_turn:
                        self._readers_turn = False
                        self._cond.notify_all()
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
            while self._writing or self._readers_turn:
                self._cond.wait()
            self._writing = True  # from now on new readers wait
            try:
                while self._readers:
                    self._cond.wait()
            except BaseException:  # interrupted: give the lock back, wake the waiting readers
                self._writing = False
                if self._readers_waiting:
                    self._readers_turn = True
                self._cond.notify_all()
                raise

    def release_write(self) -> None:
        with self._cond:
            self._writing = False
            if self._readers_waiting:
                self._readers_turn = True
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

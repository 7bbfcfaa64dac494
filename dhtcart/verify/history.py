"""Histories of operations: a recorder that writes them, the files they live in, merging them.

A history is a list of events, one JSON object per line, in real-time order
(the format is in ``docs/verify.md``; :mod:`dhtcart.verify.checker` decides whether
one is linearizable). :class:`HistoryRecorder` wraps anything with a store's
``get``/``put``/``delete`` and emits an ``invoke`` event just before each
call and an ``ok``, ``fail`` or ``info`` event just after it:

>>> from dhtcart import DHTServerStore
>>> events = []
>>> with DHTServerStore(shards=2) as store:
...     recorder = HistoryRecorder(store, events.append, process=0)
...     recorder.put(7, b"a")
...     recorder.get(7)
1
Record(version=1, value=b'a')
>>> [(e["type"], e["f"], e.get("version")) for e in events]
[('invoke', 'write', None), ('ok', 'write', 1), ('invoke', 'read', None), ('ok', 'read', 1)]

Real time across processes: each event carries ``time``, from
``time.monotonic_ns()`` (on Linux ``CLOCK_MONOTONIC``, one clock for every
process of the machine), taken just before the call and just after it
returns, so the recorded interval contains the real one. Each process writes
its own file (:class:`HistoryWriter`); :func:`merge_histories` merges them by
time, an invocation first on a tie (which only makes operations concurrent:
the conservative choice). Clocks of different machines are not comparable:
record on one host.
"""

from __future__ import annotations

import base64
import heapq
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any, Protocol

from dhtcart.backends.base import Record
from dhtcart.checks import check_key, check_value
from dhtcart.errors import InvalidValue, MalformedHistory, VersionConflict

__all__ = [
    "HistoryRecorder",
    "HistoryWriter",
    "KeyValueStore",
    "encode_value",
    "merge_histories",
    "read_history",
]

Event = dict[str, Any]


class KeyValueStore(Protocol):
    """What :class:`HistoryRecorder` needs: a store's three single-key operations."""

    def get(self, key: int) -> Record | None: ...

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int: ...

    def delete(self, key: int, expected_version: int | None = None) -> bool: ...


def encode_value(value: bytes) -> str | dict[str, str]:
    """A stored value as it appears in a history: its text if it is UTF-8, else ``{"base64": ...}``.

    >>> encode_value(b"v1"), encode_value(b"\\xff")
    ('v1', {'base64': '/w=='})
    """
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def _check_expected(expected: object) -> int | None:
    if expected is None:
        return None
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
        raise InvalidValue(f"expected_version must be an int >= 0, not {expected!r}")
    return expected


class HistoryRecorder:
    """Wrap ``store`` and send an event to ``sink`` before and after each ``get``, ``put`` and ``delete``.

    ``store`` may be a :class:`~dhtcart.store.DHTServerStore`, a
    :class:`~dhtcart.server.DHTServer`, a backend, or anything with those
    three methods. ``process`` names this client in the events: a recorder is
    one process of the history, so give each thread or process its own. The
    calls return (and raise) exactly what the store's do.

    How outcomes are recorded: a result is ``ok``; a
    :class:`~dhtcart.errors.VersionConflict` from a compare-and-set or a
    conditional delete is ``fail`` (with the version found); any other
    exception (an unreachable shard, a timeout, an interrupt) is ``info``: the
    operation may or may not have happened. Arguments are validated *before*
    the invocation is recorded, so a validation error is never in the history.
    """

    def __init__(
        self,
        store: KeyValueStore,
        sink: Callable[[Event], object],
        process: int | str,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.store = store
        self.sink = sink
        self.process = process
        self.clock = clock
        #: operations this recorder completed for runs of a ``modify``'s change that the store
        #: made again (a ``fail`` after a conflict, an ``info`` after a refusal with another
        #: value), beside the one each call records for its last run
        self.repeated = 0

    def _invoke(self, f: str, key: int, **fields: Any) -> None:
        t = self.clock()
        self.sink({"process": self.process, "type": "invoke", "f": f, "key": key, **fields, "time": t})

    def _complete(self, kind: str, f: str, key: int, **fields: Any) -> None:
        t = self.clock()
        self.sink({"process": self.process, "type": kind, "f": f, "key": key, **fields, "time": t})

    def get(self, key: int) -> Record | None:
        """``store.get(key)``, recorded as a ``read``."""
        key = check_key(key)
        self._invoke("read", key)
        try:
            rec = self.store.get(key)
        except BaseException:
            self._complete("info", "read", key)
            raise
        if rec is None:
            self._complete("ok", "read", key, value=None, version=0)
        else:
            self._complete("ok", "read", key, value=encode_value(rec.value), version=rec.version)
        return rec

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        """``store.put(...)``, recorded as a ``write`` (or a ``cas`` with ``expected_version``)."""
        key = check_key(key)
        data = check_value(value)
        expected = _check_expected(expected_version)
        shown = encode_value(data)
        if expected is None:
            f, extra = "write", {}
        else:
            f, extra = "cas", {"expected": expected}
        self._invoke(f, key, value=shown, **extra)
        try:
            version = self.store.put(key, data, expected)
        except VersionConflict as exc:
            if expected is None:
                self._complete("info", f, key)
            else:
                self._complete("fail", f, key, version=exc.actual)
            raise
        except BaseException:
            self._complete("info", f, key)
            raise
        self._complete("ok", f, key, value=shown, version=version)
        return version

    def delete(self, key: int, expected_version: int | None = None) -> bool:
        """``store.delete(...)``, recorded as a ``delete`` (with ``expected`` when conditional)."""
        key = check_key(key)
        expected = _check_expected(expected_version)
        extra = {} if expected is None else {"expected": expected}
        self._invoke("delete", key, **extra)
        try:
            existed = self.store.delete(key, expected)
        except VersionConflict as exc:
            if expected is None:
                self._complete("info", "delete", key)
            else:
                self._complete("fail", "delete", key, version=exc.actual)
            raise
        except BaseException:
            self._complete("info", "delete", key)
            raise
        self._complete("ok", "delete", key, existed=bool(existed))
        return bool(existed)

    def modify(self, key: int, change: Callable[[Record | None], bytes | None], **options: Any) -> Record | None:
        """``store.modify(key, change)``, recorded as what it is: a ``cas`` from the version the
        change saw (or a ``read`` when it leaves the record as it was).

        The change runs inside the store's call, so the invocation is written
        from inside it, once the expected version and the value are known and
        before the write commits (a process killed after the commit leaves an
        open ``cas``, which may have happened); its time is the one taken before
        the call for the first run, and the start of its own run for a later one.

        The store runs the change again only when the last run's write did not
        take effect (a compare-and-set conflict, or a redirect or a refusal
        before the write). That run is completed as a ``fail`` when this run
        sees another record than it saw (a write came between: a conflict),
        without a version: the conflict's is not known here, and the one this
        run sees is a later state (after a delete it can even be the very
        version expected). When this run sees the same record (refused for
        another reason, a redirect during a rebalance) and makes the same
        value, it is the same compare-and-set made again: the open invocation
        stands for both runs, and completes with the last (it took effect, if
        at all, after it was first invoked). With another value it is
        completed as an ``info`` (the checker's ``fail`` would claim a version
        it never had). A call that raised after a run that would write is an
        ``info`` cas; one that raised before the change ever ran (the store's
        read of the record failed) an ``info`` read, so that every call is one
        operation of the history.
        """
        key = check_key(key)
        start = self.clock()
        state: dict[str, Any] = {"open": False, "runs": 0, "time": start}

        def recorded(rec: Record | None) -> bytes | None:
            current = rec.version if rec is not None else 0
            seen = (current, None if rec is None else rec.value)
            if state["runs"]:  # the store runs the change again: the last run's write did not happen
                if state["open"] and seen != state["seen"]:  # a conflict
                    self._complete("fail", "cas", key)
                    self.repeated += 1
                    state["open"] = False
                state["time"] = self.clock()
            state["runs"] += 1
            state["seen"] = seen
            value = change(rec)
            state["record"] = rec
            shown = None if value is None else encode_value(check_value(value))
            if state["open"]:  # run again on the same record
                if shown == state["shown"]:
                    return value  # the same compare-and-set again: its open invocation stands for it
                self._complete("info", "cas", key)
                self.repeated += 1
                state["open"] = False
                state["time"] = self.clock()  # after that completion (the write is yet to come)
            if shown is not None:
                state["shown"] = shown
                self.sink(
                    {
                        "process": self.process,
                        "type": "invoke",
                        "f": "cas",
                        "key": key,
                        "value": shown,
                        "expected": current,
                        "time": state["time"],
                    }
                )
                state["open"] = True
            return value

        try:
            after: Record | None = self.store.modify(key, recorded, **options)  # type: ignore[attr-defined]
        except BaseException:
            if state["open"]:
                self._complete("info", "cas", key)
            elif not state["runs"]:  # raised before its change ever ran (a read timed out): it read, at most
                self.sink({"process": self.process, "type": "invoke", "f": "read", "key": key, "time": start})
                self._complete("info", "read", key)
            raise
        if state["open"]:
            assert after is not None
            self._complete("ok", "cas", key, value=encode_value(after.value), version=after.version)
        elif "record" in state:  # left as it was: an atomic read of the record the change saw
            rec = state["record"]
            self.sink({"process": self.process, "type": "invoke", "f": "read", "key": key, "time": state["time"]})
            if rec is None:
                self._complete("ok", "read", key, value=None, version=0)
            else:
                self._complete("ok", "read", key, value=encode_value(rec.value), version=rec.version)
        return after

    def __repr__(self) -> str:
        return f"<HistoryRecorder process {self.process!r} over {self.store!r}>"


class HistoryWriter:
    """A sink for :class:`HistoryRecorder` that writes each event as one line of a file.

    Every line is handed to the operating system as it is written (line
    buffering), so a process killed at any moment leaves every event it
    recorded, and at most one last line cut short (which :func:`read_history`
    ignores). Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False) -> None:
        self.path = os.fspath(path)
        self._file: IO[str] = open(self.path, "a" if append else "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def __call__(self, event: Mapping[str, Any]) -> None:
        """Write ``event`` as one line."""
        self._file.write(self._dumps(event) + "\n")

    def close(self) -> None:
        """Close the file. Idempotent."""
        self._file.close()

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_history(path: str | os.PathLike[str]) -> Iterator[Event]:
    """Yield the events of a history file (one JSON object per line; blank lines skipped).

    A last line without its newline that is not valid JSON was cut short by a
    crash and is ignored; any other bad line raises
    :class:`~dhtcart.errors.MalformedHistory`. ``OSError`` if the file
    cannot be read.
    """
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as exc:
                if not line.endswith("\n"):
                    return  # the writer was killed in the middle of this line
                raise MalformedHistory(n, f"not JSON: {exc.msg}") from None
            yield event


def _time(event: Mapping[str, Any], stream: int) -> int:
    t = event.get("time") if isinstance(event, Mapping) else None
    if type(t) is not int:
        shown = f"{event!r:.80}"
        raise MalformedHistory(0, f"stream {stream}: merging by time needs an int 'time' in every event, got {shown}")
    result: int = t
    return result


def merge_histories(streams: Iterable[Iterable[Mapping[str, Any]]]) -> Iterator[Event]:
    """Merge per-process event streams into one history in real-time order.

    Each stream must be in its own order (as a recorder wrote it); events are
    taken by ``time``, and on a tie an invocation goes before a completion.
    Each stream's own order is kept whatever the times say.

    >>> a = [{"process": 0, "type": "invoke", "time": 1}, {"process": 0, "type": "ok", "time": 5}]
    >>> b = [{"process": 1, "type": "invoke", "time": 5}, {"process": 1, "type": "ok", "time": 6}]
    >>> [(e["process"], e["type"]) for e in merge_histories([a, b])]
    [(0, 'invoke'), (1, 'invoke'), (0, 'ok'), (1, 'ok')]
    """
    heap: list[tuple[int, int, int, Event, Iterator[Mapping[str, Any]]]] = []
    for n, stream in enumerate(streams):
        it = iter(stream)
        for event in it:
            heapq.heappush(heap, (_time(event, n), event.get("type") != "invoke", n, dict(event), it))
            break
    while heap:
        _, _, n, event, it = heapq.heappop(heap)
        yield event
        for nxt in it:
            heapq.heappush(heap, (_time(nxt, n), nxt.get("type") != "invoke", n, dict(nxt), it))
            break

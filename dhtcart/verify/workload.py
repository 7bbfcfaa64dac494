"""One client of a verification run: random operations on a few keys, recorded as they happen.

:func:`run_workload` drives a :class:`~dhtcart.verify.history.HistoryRecorder`
(so every call lands in a history) with the operation mix :data:`MIX`:
reads, compare-and-sets that expect the version this client last saw (as a
read-modify-write would), the store's own read-modify-write
(:meth:`~dhtcart.store.DHTServerStore.modify`, where the store has it),
unconditional writes, conditional and plain deletes. Values are unique
(``<prefix><n>``), which lets the checker tie every read to its write. A
whole run of many such clients, in processes of their own, is
:func:`dhtcart.verify.run.verify_store`.

>>> from dhtcart import DHTServerStore
>>> from dhtcart.verify import HistoryRecorder, check_history
>>> events = []
>>> with DHTServerStore(shards=2) as store:
...     recorder = HistoryRecorder(store, events.append, process=0)
...     stats = run_workload(recorder, [1, 2, 3], seconds=60, seed=1, max_operations=200)
>>> stats.operations, stats.ok + stats.fail, check_history(events).valid
(200, 200, True)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dhtcart.backends.base import Record
from dhtcart.errors import DHTCartError, InvalidInput, ValidationError, VersionConflict
from dhtcart.verify.history import HistoryRecorder

__all__ = ["DEFAULT_RATE", "MIX", "OPERATIONS", "WorkloadStats", "check_mix", "parse_mix", "run_workload"]

#: how many of each 100 operations are reads, compare-and-sets, one-step read-modify-writes
#: (``store.modify``; a compare-and-set where the store has no ``modify``), writes, conditional
#: and plain deletes (``dhtcart verify``'s mix; :func:`run_workload` takes others)
MIX = {"read": 40, "cas": 25, "modify": 10, "write": 12, "cdelete": 10, "delete": 3}
#: the operations a mix may name: ``"modify"`` is the store's one-step read-modify-write
#: (:meth:`~dhtcart.store.DHTServerStore.modify`; a compare-and-set where the store has none)
OPERATIONS = frozenset({"read", "cas", "modify", "write", "cdelete", "delete"})
#: operations per second of all clients together, by default (a history that checks in about a second)
DEFAULT_RATE = 5_000.0


def check_mix(mix: Mapping[str, int]) -> dict[str, int]:
    """``mix`` as a dict, if it is one: weights (ints >= 0, not all 0) of operations among
    :data:`OPERATIONS`; else :class:`~dhtcart.errors.InvalidInput`."""
    if (
        not isinstance(mix, Mapping)
        or not set(mix) <= OPERATIONS
        or not all(type(w) is int and w >= 0 for w in mix.values())
        or sum(mix.values()) == 0
    ):
        raise InvalidInput(
            "mix", f"weights (ints >= 0, not all 0) of operations among {sorted(OPERATIONS)}, not {mix!r}"
        )
    return dict(mix)


def parse_mix(text: str) -> dict[str, int]:
    """A mix written ``read=50,cas=30,write=20`` (operations not named weigh 0); see :func:`check_mix`.

    >>> parse_mix("read=50, cas=30,write=20")
    {'read': 50, 'cas': 30, 'write': 20}
    """
    mix: dict[str, int] = {}
    for part in text.split(","):
        name, eq, weight = (half.strip() for half in part.partition("="))
        if not eq or not (weight.isascii() and weight.isdigit()) or name in mix:
            raise InvalidInput("mix", f"NAME=WEIGHT pairs, each operation once, separated by commas, not {text!r}")
        mix[name] = int(weight)
    return check_mix(mix)


@dataclass
class WorkloadStats:
    """What one client did, as it saw it."""

    operations: int = 0
    ok: int = 0
    fail: int = 0
    info: int = 0
    #: compare-and-sets in the history, beside the operations counted above, for runs of a
    #: ``modify``'s change that the store made again (:attr:`HistoryRecorder.repeated
    #: <dhtcart.verify.history.HistoryRecorder.repeated>`: failed after a conflict; a run made
    #: again after a redirect, on the same record with the same value, is no operation more)
    retried: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # exception names of the info outcomes

    def to_dict(self) -> dict[str, Any]:
        """As a JSON-ready dict."""
        return asdict(self)


def _writes(value: bytes) -> Callable[[Record | None], bytes]:
    """A ``modify`` change that writes ``value`` whatever the record (the workload's values are
    unique, so the checker can tie reads to it)."""

    def change(_record: Record | None) -> bytes:
        return value

    return change


def run_workload(
    recorder: HistoryRecorder,
    keys: Sequence[int],
    *,
    seconds: float,
    seed: int | None = None,
    max_operations: int | None = None,
    value_prefix: str = "",
    backoff: float = 0.02,
    rate: float | None = None,
    mix: Mapping[str, int] | None = None,
) -> WorkloadStats:
    """Run one client's operations on ``keys`` through ``recorder`` for ``seconds`` (or ``max_operations``).

    ``rate`` paces the client at about that many operations per second, with
    exponentially distributed gaps (so clients still overlap at random);
    ``None`` runs flat out.

    A compare-and-set or a conditional delete expects the version this client
    last saw for the key (0 if none), as a read-modify-write would. An
    operation whose outcome is unknown (an unreachable shard, a timeout: the
    recorder writes ``info``) is followed by a pause of ``backoff`` seconds.
    Validation errors are bugs of the caller and propagate.

    ``mix`` weighs the operations (default :data:`MIX`, ``dhtcart verify``'s),
    ``"modify"`` among them (:meth:`HistoryRecorder.modify
    <dhtcart.verify.history.HistoryRecorder.modify>` says how its runs are
    recorded).
    """
    if not keys:
        raise InvalidInput("keys", "a workload needs at least one key")
    mix = check_mix(MIX if mix is None else mix)
    rng = random.Random(seed)
    names = list(mix)
    weights = list(mix.values())
    modifies = callable(getattr(recorder.store, "modify", None))
    seen: dict[int, int] = {}
    stats = WorkloadStats()
    now = time.monotonic()
    deadline = now + seconds
    due = now
    while now < deadline and (max_operations is None or stats.operations < max_operations):
        if rate:
            due += rng.expovariate(rate)
            if due > now:
                time.sleep(due - now)
        key = keys[rng.randrange(len(keys))]
        f = rng.choices(names, weights)[0]
        stats.operations += 1
        value = f"{value_prefix}{stats.operations}".encode()
        try:
            if f == "read":
                rec = recorder.get(key)
                seen[key] = rec.version if rec is not None else 0
            elif f == "cas" or (f == "modify" and not modifies):
                seen[key] = recorder.put(key, value, seen.get(key, 0))
            elif f == "modify":
                before = recorder.repeated
                try:
                    after = recorder.modify(key, _writes(value))
                finally:
                    stats.retried += recorder.repeated - before
                seen[key] = after.version if after is not None else 0
            elif f == "write":
                seen[key] = recorder.put(key, value)
            else:
                recorder.delete(key, seen.get(key, 0) if f == "cdelete" else None)
                seen[key] = 0
            stats.ok += 1
        except VersionConflict as exc:
            seen[key] = exc.actual
            stats.fail += 1
        except ValidationError:
            raise
        except (DHTCartError, OSError) as exc:  # the recorder wrote info: it may or may not have happened
            seen.pop(key, None)
            stats.info += 1
            name = type(exc).__name__
            stats.errors[name] = stats.errors.get(name, 0) + 1
            time.sleep(backoff)
        now = time.monotonic()
    return stats

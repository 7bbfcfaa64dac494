"""The search: a just-in-time linearization of one key's operations (Lowe, 2017, refining Wing and Gong).

When no rule of :mod:`dhtcart.verify.checker.rules` fires, :class:`Search`
decides exactly whether some order of the key's operations respects real
time and explains every result, or gives up after ``max_steps`` steps
(:class:`BudgetExhausted`: the key is undecided, never called linearizable).
Versions pin the order of writes, so the search rarely branches; operations
whose outcome is unknown and whose value nobody read are interchangeable,
counted rather than enumerated. The method, and its cost, are in
``docs/verify.md``; :func:`search_anomaly` turns a failure into a witness.

>>> from dhtcart.verify.checker.parse import parse_events
>>> by_key, _ = parse_events([  # a cas that failed although the key was at its expected version all along
...     {"process": 0, "type": "invoke", "f": "write", "key": 1, "value": "a"},
...     {"process": 0, "type": "ok", "f": "write", "key": 1, "value": "a", "version": 1},
...     {"process": 1, "type": "invoke", "f": "cas", "key": 1, "expected": 1, "value": "b"},
...     {"process": 1, "type": "fail", "f": "cas", "key": 1},
... ])
>>> linearizable, culprit, _ = Search(by_key[1], DEFAULT_MAX_STEPS).run()
>>> linearizable, str(culprit.public())
(False, "process 1: cas 'b' if version 1 -> fail [line 3-4]")
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from dhtcart.verify.checker.parse import Op
from dhtcart.verify.checker.report import Anomaly

__all__ = ["DEFAULT_MAX_STEPS", "MAX_CONFIGURATIONS", "BudgetExhausted", "Search", "search_anomaly"]

#: steps the search may take per key, at least (it also allows 1,000 per event of the key); a step
#: is one configuration explored or compared, about a microsecond
DEFAULT_MAX_STEPS = 1_000_000
#: configurations the search may keep at once for a key (each a different explanation so far)
MAX_CONFIGURATIONS = 2_000


class BudgetExhausted(Exception):
    """The search used up its steps."""


_READ, _FAIL, _MUT, _OPT, _POOL, _DROP = range(6)
_EXACT, _PRESENT, _ANYWHERE = range(3)
_ABSENT: tuple[int, Any] = (0, None)


class _Unread:
    """The value of a write nobody read: no read can match it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unread>"


_UNREAD = _Unread()

State = tuple[int, Any]
Used = tuple[int, ...]  # per class of unknown-outcome operations (by index), how many were used
Config = tuple[State, frozenset[int], Used]

_W, _D = ("w",), ("d",)  # the generic classes: an unconditional write, an unconditional delete
_KIND_W, _KIND_D, _KIND_C, _KIND_CD = range(4)


def _used_inc(used: Used, index: int) -> Used:
    if index < len(used):
        return (*used[:index], used[index] + 1, *used[index + 1 :])
    return used + (0,) * (index - len(used)) + (1,)


class Search:
    """Just-in-time linearization of one key's operations.

    A *configuration* is a state of the register, the set of pending
    operations already placed (linearized ahead of their completion) and how
    many interchangeable unknown-outcome operations of each class were used.
    Walking the history, an invocation only registers the operation (a read
    is placed at once where the state it saw is current); a completion forces
    the operation in: each configuration is extended by every sequence of
    pending operations that ends with it. Read-like operations (reads, fails)
    are placed as soon as their state is current, which loses nothing because
    they change nothing. Configurations that are no better than another (same
    state and placed set, more unknown-outcome operations used) are dropped.
    """

    def __init__(self, ops: Sequence[Op], max_steps: int) -> None:
        self.ops = {op.id: op for op in ops}
        self.steps = max_steps
        read_values: dict[Any, int] = {}
        writers: Counter[Any] = Counter()
        for op in ops:
            if op.f == "read" and op.outcome == "ok" and op.canon is not None:
                assert op.version is not None
                read_values.setdefault(op.canon, op.version)
            elif op.f in ("write", "cas") and op.outcome != "fail":
                writers[op.canon] += 1
        self.writers = writers
        self.role: dict[int, int] = {}
        self.pre: dict[int, tuple[int, int]] = {}  # individual mutations: (kind, version)
        self.post: dict[int, State] = {}
        self.seen_state: dict[int, State] = {}  # reads: the state they saw
        self.fail_pred: dict[int, tuple[int, int | None]] = {}  # fails: (expected, reported version)
        self.pool_class: dict[int, tuple[Any, ...]] = {}
        self.events: list[tuple[int, int, int]] = []  # (line, 0 invoke / 1 complete, op id)
        for op in ops:
            role = self._classify(op, read_values)
            self.role[op.id] = role
            if role == _DROP:
                continue
            self.events.append((op.inv, 0, op.id))
            if role in (_READ, _FAIL, _MUT):
                self.events.append((op.ret, 1, op.id))
        self.events.sort()
        # what is pending now
        self.mut_exact: dict[int, set[int]] = defaultdict(set)
        self.mut_present: set[int] = set()
        self.mut_anywhere: set[int] = set()
        self.writer_of: dict[Any, set[int]] = defaultdict(set)
        self.pending_writes = 0  # individual mutations that write, pending
        self.pending_deletes = 0
        self.reads_at: dict[State, set[int]] = defaultdict(set)
        self.fails: set[int] = set()
        # unknown-outcome operations nobody read, by class: ("w",), ("c", e), ("d",), ("cd", e)
        self.class_index: dict[tuple[Any, ...], int] = {}
        self.class_kind: list[int] = []
        self.invoked: list[int] = []  # per class: how many were invoked so far
        self.pool_writes = 0  # of them, writes (any class)
        self.pool_deletes = 0
        self._sums: dict[Used, tuple[int, int]] = {(): (0, 0)}

    def _classify(self, op: Op, read_values: dict[Any, int]) -> int:
        f, outcome, e = op.f, op.outcome, op.expected
        if f == "read":
            if outcome != "ok":
                return _DROP
            assert op.version is not None
            self.seen_state[op.id] = (op.version, op.canon)
            return _READ
        if outcome == "fail":
            if e is None:
                return _DROP  # an unconditional write or delete that did not happen
            self.fail_pred[op.id] = (e, op.version)
            return _FAIL
        if f in ("write", "cas"):
            value = op.canon if op.canon in read_values else _UNREAD
            if outcome == "ok":
                assert op.version is not None
                self.pre[op.id] = (_EXACT, op.version - 1)
                self.post[op.id] = (op.version, value)
                return _MUT
            if value is _UNREAD:
                self.pool_class[op.id] = _W if f == "write" else ("c", e)
                return _POOL
            if f == "cas":
                assert e is not None
                self.pre[op.id] = (_EXACT, e)
                self.post[op.id] = (e + 1, value)
            elif self.writers[op.canon] == 1:
                # its value was read, and it is the only writer: it happened, at the
                # version the reads saw (the rules made sure they all saw one)
                version = read_values[op.canon]
                self.pre[op.id] = (_EXACT, version - 1)
                self.post[op.id] = (version, value)
            else:  # another operation may have written what was read: any version
                self.pre[op.id] = (_ANYWHERE, 0)
                self.post[op.id] = (-1, value)
            return _OPT
        # delete
        if outcome == "ok":
            if e == 0 or (e is None and op.existed is False):
                self.seen_state[op.id] = _ABSENT
                return _READ
            self.post[op.id] = _ABSENT
            if e is not None:
                self.pre[op.id] = (_EXACT, e)
            else:
                self.pre[op.id] = (_PRESENT, 0) if op.existed else (_ANYWHERE, 0)
            return _MUT
        if e == 0:
            return _DROP
        self.pool_class[op.id] = _D if e is None else ("cd", e)
        return _POOL

    # -- registering and retiring pending operations

    def _add_pending(self, i: int) -> None:
        kind, version = self.pre[i]
        if kind == _EXACT:
            self.mut_exact[version].add(i)
        elif kind == _PRESENT:
            self.mut_present.add(i)
        else:
            self.mut_anywhere.add(i)
        post = self.post[i]
        if post[0]:
            self.pending_writes += 1
            self.writer_of[post[1]].add(i)
        else:
            self.pending_deletes += 1

    def _remove_pending(self, i: int) -> None:
        kind, version = self.pre[i]
        if kind == _EXACT:
            self.mut_exact[version].discard(i)
        elif kind == _PRESENT:
            self.mut_present.discard(i)
        else:
            self.mut_anywhere.discard(i)
        post = self.post[i]
        if post[0]:
            self.pending_writes -= 1
            self.writer_of[post[1]].discard(i)
        else:
            self.pending_deletes -= 1

    # -- the register

    def _after(self, i: int, state: State) -> State:
        """The state after individual mutation ``i`` at ``state`` (version -1 in ``post``: one more than now)."""
        after = self.post[i]
        return (state[0] + 1, after[1]) if after[0] < 0 else after

    def _fail_ok(self, i: int, version: int) -> bool:
        expected, found = self.fail_pred[i]
        return version == found if found is not None else version != expected

    def _greedy(self, state: State, placed: frozenset[int]) -> frozenset[int]:
        """Place every pending read-like operation that ``state`` satisfies."""
        add = [r for r in self.reads_at.get(state, ()) if r not in placed]
        if self.fails:
            v = state[0]
            add += [i for i in self.fails if i not in placed and self._fail_ok(i, v)]
        return placed.union(add) if add else placed

    def _register_pool(self, cls: tuple[Any, ...]) -> None:
        index = self.class_index.get(cls)
        if index is None:
            index = self.class_index[cls] = len(self.invoked)
            self.invoked.append(0)
            self.class_kind.append({"w": _KIND_W, "d": _KIND_D, "c": _KIND_C, "cd": _KIND_CD}[cls[0]])
        self.invoked[index] += 1
        if cls[0] in ("w", "c"):
            self.pool_writes += 1
        else:
            self.pool_deletes += 1

    def _used_sums(self, used: Used) -> tuple[int, int]:
        """(writes, deletes) among the unknown-outcome operations ``used`` counts."""
        sums = self._sums.get(used)
        if sums is None:
            kinds = self.class_kind
            w = sum(n for i, n in enumerate(used) if kinds[i] in (_KIND_W, _KIND_C))
            sums = self._sums[used] = (w, sum(used) - w)
        return sums

    def _left(self, used: Used, cls: tuple[Any, ...]) -> int:
        index = self.class_index.get(cls)
        if index is None:
            return 0
        return self.invoked[index] - (used[index] if index < len(used) else 0)

    def _no_worse(self, a: Used, b: Used) -> bool:
        """Whether a configuration that used ``a`` can do whatever one that used ``b`` can.

        An unconditional write (class ``w``) can stand in for any compare-and-set
        (class ``c, e``) and an unconditional delete (``d``) for any conditional
        one (``cd, e``): ``a`` is no worse if the generic operations it has left
        over ``b`` cover every specific one it used more of. Costs a step.
        """
        self.steps -= 1
        if a == b:
            return True
        kinds = self.class_kind
        la, lb = len(a), len(b)
        spare_w = spare_d = 0
        for i in range(max(la, lb)):
            x = a[i] if i < la else 0
            y = b[i] if i < lb else 0
            if x == y:
                continue
            kind = kinds[i]
            if kind == _KIND_W:
                spare_w += y - x
            elif kind == _KIND_D:
                spare_d += y - x
            elif x > y:
                if kind == _KIND_C:
                    spare_w -= x - y
                else:
                    spare_d -= x - y
        return spare_w >= 0 and spare_d >= 0

    def _pool_moves(self, v: int, used: Used) -> list[tuple[int, State]]:
        """The unknown-outcome operations worth trying at version ``v``: (class index, state after).

        A specific class (``c, v``; ``cd, v``) is preferred to the generic one
        with the same effect: using it leaves the more useful one for later.
        """
        moves = []
        for specific, generic, after in ((("c", v), _W, (v + 1, _UNREAD)), (("cd", v), _D, _ABSENT)):
            if after is _ABSENT and not v:
                continue  # nothing to delete
            for cls in (specific, generic):
                if self._left(used, cls) > 0:
                    moves.append((self.class_index[cls], after))
                    break
        return moves

    def _reachable(self, state: State, placed: frozenset[int], used: Used, target: int) -> bool:
        """Whether the pending operations could still bring the register to where ``target`` fits."""
        writes, deletes = self.pending_writes, self.pending_deletes
        for i in placed:
            if i in self.post:
                if self.post[i][0]:
                    writes -= 1
                else:
                    deletes -= 1
        if target in self.post and self.post[target][0]:
            writes -= 1
        used_writes, used_deletes = self._used_sums(used)
        writes += self.pool_writes - used_writes
        deletes += self.pool_deletes - used_deletes
        v = state[0]
        role = self.role[target]
        if role == _READ:
            want, value = self.seen_state[target]
            if want == 0:
                return deletes > 0
            return any(w not in placed for w in self.writer_of.get(value, ()))
        if role == _FAIL:
            found = self.fail_pred[target][1]
            if found is None:
                return writes > 0 or deletes > 0
            want = found
        else:
            kind, want = self.pre[target]
            if kind == _ANYWHERE:
                return True
            if kind == _PRESENT:
                return v > 0 or writes > 0
        if want == v:
            return True
        if want > v and writes >= want - v:
            return True
        return deletes > 0 and writes >= want

    def _explore(self, start: Config, target: int) -> list[Config]:
        """Every configuration in which ``target`` (completing now) is placed, from ``start``."""
        role = self.role[target]
        results: list[Config] = []
        stack = [start]
        seen: dict[tuple[State, frozenset[int]], list[Used]] = {(start[0], start[1]): [start[2]]}
        while stack:
            config = stack.pop()
            self.steps -= 1
            if self.steps < 0:
                raise BudgetExhausted
            state, placed, used = config
            v = state[0]
            if role == _READ:
                if state == self.seen_state[target]:
                    results.append(config)
                    continue
            elif role == _FAIL:
                if self._fail_ok(target, v):
                    results.append(config)
                    continue
            else:
                kind, want = self.pre[target]
                if kind == _ANYWHERE or (v == want if kind == _EXACT else v > 0):
                    after = self._after(target, state)
                    results.append((after, self._greedy(after, placed), used))
            if not self._reachable(state, placed, used, target):
                continue
            nexts: list[Config] = []
            present = self.mut_present if v else ()
            for i in itertools.chain(self.mut_exact.get(v, ()), present, self.mut_anywhere):
                if i != target and i not in placed:
                    after = self._after(i, state)
                    nexts.append((after, self._greedy(after, placed | {i}), used))
            for index, after2 in self._pool_moves(v, used):
                nexts.append((after2, self._greedy(after2, placed), _used_inc(used, index)))
            for nxt in nexts:
                key = (nxt[0], nxt[1])
                known = seen.get(key)
                if known is None:
                    seen[key] = [nxt[2]]
                elif any(self._no_worse(u, nxt[2]) for u in known):
                    continue
                else:
                    known.append(nxt[2])
                stack.append(nxt)
        return results

    def _prune(self, configs: Iterable[Config]) -> list[Config]:
        """Drop duplicates, and configurations no better than another (same state, fewer resources left)."""
        groups: dict[tuple[State, frozenset[int]], list[Used]] = {}
        for state, placed, used in configs:
            known = groups.setdefault((state, placed), [])
            if any(self._no_worse(u, used) for u in known):
                continue
            known[:] = [u for u in known if not self._no_worse(used, u)]
            known.append(used)
        return [(s, p, u) for (s, p), us in groups.items() for u in us]

    def run(self) -> tuple[bool, Op | None, list[Config]]:
        """Walk the history; return (linearizable, the operation that could not be placed, its configurations)."""
        configs: list[Config] = [(_ABSENT, frozenset(), ())]
        for _, completes, i in self.events:
            role = self.role[i]
            if not completes:
                if role == _READ:
                    state = self.seen_state[i]
                    self.reads_at[state].add(i)
                    configs = [(s, p | {i}, u) if s == state else (s, p, u) for s, p, u in configs]
                elif role == _FAIL:
                    self.fails.add(i)
                    configs = [(s, p | {i}, u) if self._fail_ok(i, s[0]) else (s, p, u) for s, p, u in configs]
                elif role in (_MUT, _OPT):
                    self._add_pending(i)
                else:
                    self._register_pool(self.pool_class[i])
                continue
            self.steps -= len(configs)
            if self.steps < 0:
                raise BudgetExhausted
            after: list[Config] = []
            for config in configs:
                state, placed, used = config
                if i in placed:
                    after.append((state, placed - {i}, used))
                else:
                    for s, p, u in self._explore(config, i):
                        after.append((s, p - {i} if i in p else p, u))
            if role == _READ:
                self.reads_at[self.seen_state[i]].discard(i)
            elif role == _FAIL:
                self.fails.discard(i)
            else:
                self._remove_pending(i)
            if not after:
                return False, self.ops[i], configs
            configs = self._prune(after)
            if len(configs) > MAX_CONFIGURATIONS:
                raise BudgetExhausted
            if len(configs) == 1:
                self._retire(configs)
        return True, None, configs

    def _retire(self, configs: list[Config]) -> list[Config]:
        """Unknown-outcome operations placed in the only configuration are done for good."""
        state, placed, used = configs[0]
        done = [i for i in placed if self.role[i] == _OPT]
        if done:
            for i in done:
                self._remove_pending(i)
            configs[0] = (state, placed.difference(done), used)
        return configs


def _made(state: State, ops: Sequence[Op], before: int) -> Op | None:
    """The acknowledged write that most plausibly made ``state``: the last one begun before line ``before``."""
    version, value = state
    found = None
    for op in ops:
        made = op.f in ("write", "cas") and op.outcome == "ok" and op.version == version and op.inv < before
        if made and (value is _UNREAD or op.canon == value) and (found is None or op.inv > found.inv):
            found = op
    return found


def _describe_state(state: State, made: Op | None) -> str:
    version, _value = state
    if version == 0:
        return "absent"
    if made is not None:
        return f"{made.value!r} v{version}"
    return f"v{version}"


def search_anomaly(key: Any, ops: Sequence[Op], op: Op, configs: list[Config]) -> Anomaly:
    """The witness of a failed search: the operation that could not be placed, and who made the states."""
    states = sorted({c[0] for c in configs}, key=lambda s: s[0])[:4]
    involved = [op]
    described = []
    for state in states:
        made = _made(state, ops, op.ret)
        described.append(_describe_state(state, made))
        if made is not None and made not in involved:
            involved.append(made)
    if op.f == "read" and op.canon is not None:
        for other in ops:
            if other.canon == op.canon and other.f in ("write", "cas") and other not in involved:
                involved.append(other)
                break
    involved.sort(key=lambda o: o.inv)
    return Anomaly(
        "no-linearization",
        key,
        tuple(o.public() for o in involved),
        f"no order of the operations explains this {op.f} (line {op.inv}): when it completed"
        f" the key could only be {' or '.join(described)}",
    )

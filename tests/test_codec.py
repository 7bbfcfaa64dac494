"""The cart record's codec: a chain of changes to copies of ``Lines`` reads like a dict.

A copy of a long cart shares its fields with the Lines it came from and keeps
its own changes beside them; these checks drive chains of copies and changes
(puts of new and present items, removals, an item removed and added back,
clears, listings in between) against a plain dict, and check that every
Lines of the chain, old ones included, still reads and encodes what it held.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dhtcart.cart import codec

ITEMS = [f"sku-{i}" for i in range(40)]  # 32 or more lines: copies share their fields

KINDS = ["put"] * 4 + ["pop"] * 4 + ["list", "clear"]  # clear rare: it ends a long cart
op = st.tuples(st.sampled_from(KINDS), st.sampled_from(ITEMS), st.integers(1, 9))


def _line(item_id: str, count: int) -> codec.Line:
    return codec.line(item_id, "1.00", count, False, None, None)


def _same(lines: codec.Lines, model: dict[str, int]) -> None:
    assert len(lines) == len(model)
    assert [(ln.item_id, ln.item_count) for ln in lines] == list(model.items())
    for item_id in ITEMS:
        got = lines.get(item_id)
        assert (got.item_count if got is not None else None) == model.get(item_id)
    decoded = codec.decode(codec.encode({"c": lines})) if model else {}
    assert [(ln.item_id, ln.item_count) for ln in decoded.get("c", codec.EMPTY)] == list(model.items())


@settings(max_examples=300, deadline=None)
@given(
    start=st.one_of(st.integers(0, 40), st.integers(32, 40)), changes=st.lists(st.lists(op, max_size=12), max_size=12)
)
def test_a_chain_of_copied_and_changed_lines_reads_like_a_dict(
    start: int, changes: list[list[tuple[str, str, int]]]
) -> None:
    first = codec.Lines()
    for item_id in ITEMS[:start]:
        first.put(_line(item_id, 1))
    base = codec.decode(codec.encode({"c": first}))["c"] if start else first
    model = {item_id: 1 for item_id in ITEMS[:start]}
    kept: list[tuple[codec.Lines, dict[str, int]]] = [(base, dict(model))]
    lines = base
    for change in changes:  # each change: a copy of the last, changed, then never changed again
        lines = lines.copy()
        for kind, item_id, count in change:
            if kind == "put":
                lines.put(_line(item_id, count))
                model[item_id] = count
            elif kind == "pop":
                got = lines.pop(item_id)
                want = model.pop(item_id, None)
                assert (got.item_count if got is not None else None) == want
            elif kind == "list":
                _same(lines, model)
            else:
                lines.clear()
                model.clear()
        kept.append((lines, dict(model)))
    for old, held in kept:  # the copies did not change what the earlier Lines hold
        _same(old, held)


def test_an_item_removed_and_added_back_goes_last_in_a_long_cart() -> None:
    lines = codec.Lines()
    for item_id in ITEMS[:40]:
        lines.put(_line(item_id, 1))
    first = lines.copy()
    first.pop("sku-3")
    second = first.copy()  # shares the fields, and the removal is in its delta
    second.put(_line("sku-3", 2))
    assert [ln.item_id for ln in second][-1] == "sku-3"
    assert list(codec.decode(codec.encode({"c": second}))["c"].get("sku-3") or ()) == list(_line("sku-3", 2))
    assert "sku-3" not in [ln.item_id for ln in first]


def test_a_fold_interrupted_by_another_threads_fold_keeps_the_changes() -> None:
    """Two threads list one cached long cart at once: each folds its changes into a dict. If
    the one that started first is interrupted just after copying the shared dict, by the whole
    fold of the other, it must still apply the changes (it read them before the dict)."""
    lines = codec.Lines()
    for item_id in ITEMS:
        lines.put(_line(item_id, 1))
    cached = codec.decode(codec.encode({"c": lines}))["c"].copy()  # shares the decoded fields
    cached.put(_line("sku-0", 9))
    cached.put(_line("sku-new", 5))
    cached.pop("sku-1")
    model = {item_id: 1 for item_id in ITEMS if item_id != "sku-1"} | {"sku-0": 9, "sku-new": 5}

    class Interrupted(dict):  # type: ignore[type-arg]
        """The shared dict, whose copy lets the other thread fold just after it."""

        fired = False

        def copy(self) -> dict[str, codec.Line]:
            out = dict(self)
            if not Interrupted.fired:
                Interrupted.fired = True
                cached._fold()  # the other thread's fold, whole
            return out

    cached._lines = Interrupted(cached._lines)
    _same(cached, model)  # the first listing: its fold is the interrupted one
    assert Interrupted.fired
    _same(cached, model)  # and what it left for every later reader
    _same(cached.copy(), model)

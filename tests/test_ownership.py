"""Ownership fences: the record each shard keeps of what it owns, on every backend.

The segment algebra is checked against a model (a dict of key -> state over a
small key space, by hypothesis); the backends' fences (Moved for a key not
owned, reads only on a frozen range, token fencing of the rebalancer's
methods, imports that never overwrite a served range) run on memory, LMDB and
Redis through the ``env`` fixture.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhtcart import CorruptData, InvalidInput, InvalidKey, LeaseLost, Moved, Record, VersionConflict
from dhtcart.backends.base import BackendContext
from dhtcart.backends.ownership import (
    FROZEN,
    NOT_OWNED,
    OWNED,
    TABLE_SHIFT,
    Ownership,
    Segments,
)
from dhtcart.hashing import MAX_KEY
from tests.conftest import BackendEnv

# -- the segment algebra ----------------------------------------------------------------------

# a small key space inside the real one: the changes touch keys -1 < k <= 40
SPACE = 40
changes = st.lists(
    st.tuples(
        st.integers(-1, SPACE - 1),
        st.integers(1, SPACE),
        st.sampled_from([OWNED, FROZEN, NOT_OWNED]),
        st.sampled_from(["", "a", "b"]),
    ).filter(lambda c: c[0] < c[1]),
    max_size=12,
)


@given(changes)
def test_segments_replace_matches_a_model(ops: list[tuple[int, int, str, str]]) -> None:
    segs = Segments.all()
    model = {k: (NOT_OWNED, "") for k in range(SPACE + 2)}
    for lo, hi, state, peer in ops:
        segs = segs.replace(lo, hi, state, peer)
        for k in range(lo + 1, hi + 1):
            model[k] = (state, peer)
    for k, expected in model.items():
        assert segs.lookup(k) == expected, k
    assert segs.lookup(MAX_KEY) == (NOT_OWNED, "")
    # canonical: no two neighbouring segments alike, boundaries ascending, last is MAX_KEY
    assert segs.his[-1] == MAX_KEY and segs.his == sorted(set(segs.his))
    pairs = list(zip(segs.states, segs.peers))
    assert all(a != b for a, b in itertools.pairwise(pairs))
    assert Segments.from_list(segs.to_list()) == segs
    # spans cover exactly the range asked, in order
    spans = segs.spans(5, 30)
    assert spans[0][0] == 5 and spans[-1][1] == 30
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))


def test_replace_with_expect_refuses_and_changes_nothing() -> None:
    segs = Segments.owning([(10, 20)])
    with pytest.raises(LeaseLost, match="not 'o'"):
        segs.replace(5, 15, FROZEN, expect=OWNED)
    assert segs.lookup(7) == (NOT_OWNED, "") and segs.lookup(12) == (OWNED, "")


def test_slice_states_agree_with_the_segments() -> None:
    step = 1 << TABLE_SHIFT
    segs = Segments.owning([(0, step * 3), (step * 5 + 7, step * 9)])
    for b in range(12):
        start, end = b * step, (b + 1) * step - 1
        states = {segs.lookup(start)[0], segs.lookup(end)[0], segs.lookup(start + step // 2)[0]}
        assert segs.slice_state(b) in ("", *states)
        if len(states) > 1:
            assert segs.slice_state(b) == ""
    assert segs.slice_state(0) == ""  # key 0 is not owned, key 1 is: a boundary inside slice 0
    assert segs.slice_state(1) == OWNED and segs.slice_state(5) == "" and segs.slice_state(6) == OWNED
    assert segs.slice_state(10) == NOT_OWNED and segs.slices[10] == NOT_OWNED  # cached


def test_ownership_round_trips_and_checks_tokens() -> None:
    own = Ownership(3, 7, Segments.owning([(100, 200)]))
    assert Ownership.from_json(own.to_json()) == own
    own.check_token(7)
    with pytest.raises(LeaseLost, match="older"):
        own.check_token(6)
    with pytest.raises(LeaseLost, match="serves"):
        own.check_unserved(150, 300, "import")
    own.check_unserved(200, 300, "import")


@pytest.mark.parametrize(
    "changes",
    [
        [(0, 10, "x", "")],  # no such state
        [(10, 10, OWNED, "")],  # an empty range
        [(20, 10, OWNED, "")],  # backwards
        [(-2, 10, OWNED, "")],  # below the key space
        [(0, MAX_KEY + 1, OWNED, "")],  # past it
        [(0, 10, OWNED, ""), (5, 20, FROZEN, "")],  # overlapping
        [(0, 10, OWNED)],  # not four fields
        [("0", 10, OWNED, "")],  # a bound that is not an int
        [(0, 10.0, OWNED, "")],
        [(0, 10, OWNED, None)],  # a peer that is not a str
        [(0, 10, NOT_OWNED, "bad\npeer")],  # a peer that does not list shards (a newline)
        [(0, 10, NOT_OWNED, "a@1,")],
        [(0, 10, NOT_OWNED, "a@x")],
        [(0, 10, NOT_OWNED, "a:b")],
        ["0-10"],
    ],
)
def test_bad_changes_are_invalid_input_and_change_nothing(changes: list[object]) -> None:
    segs = Segments.owning([(0, 100)])
    with pytest.raises(InvalidInput) as info:
        segs.replace_many(changes)  # type: ignore[arg-type]
    assert info.value.field == "changes"
    assert segs == Segments.owning([(0, 100)])
    with pytest.raises(InvalidInput):  # Segments.owning() builds on replace_many
        Segments.owning([(5, 1)])


def test_a_lookup_outside_the_key_space_is_invalid_key() -> None:
    segs = Segments.all(OWNED)
    assert segs.lookup(0) == (OWNED, "") and segs.lookup(MAX_KEY) == (OWNED, "")
    for key in (-1, MAX_KEY + 1, "7", True):
        with pytest.raises(InvalidKey):
            segs.lookup(key)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        Segments([1, MAX_KEY], [OWNED], ["", ""])


_GOOD = Ownership(3, 7, Segments.owning([(100, 200)]).replace(200, 300, NOT_OWNED, "peer")).to_json()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        _GOOD[:-5],  # cut short
        b"\xff\xfe not utf-8",
        b"[]",
        b'"a string"',
        b"{}",
        _GOOD.replace(b'"epoch":3', b'"epoch":"3"'),
        _GOOD.replace(b'"epoch":3', b'"epoch":true'),
        _GOOD.replace(b'"token":7', b'"token":null'),
        _GOOD.replace(b'"states":"', b'"states":"x'),  # a state too many, and unknown
        _GOOD.replace(b'"peers":{', b'"peers":{"99":"far",'),  # a peer of no segment
        _GOOD.replace(b'"peers":{', b'"peers":{"one":"x",'),
        _GOOD.replace(b'"peers":{', b'"peers":[').replace(b"}}", b"]}"),
        _GOOD.replace(str(MAX_KEY).encode(), str(MAX_KEY - 1).encode()),  # does not end the key space
        _GOOD.replace(b'"his":[', b'"his":[500,'),  # not ascending (and one too many)
    ],
)
def test_a_stored_record_that_does_not_parse_is_corrupt_data(raw: bytes) -> None:
    assert Ownership.from_json(_GOOD).segments.lookup(250) == (NOT_OWNED, "peer")  # the good one parses
    with pytest.raises(CorruptData):
        Ownership.from_json(raw)


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [[MAX_KEY, "o"]],
        ["abc"],
        [[MAX_KEY, "z", ""]],
        [[10, "o", ""], [5, "-", ""], [MAX_KEY, "o", ""]],
        [[-5, "o", ""], [MAX_KEY, "-", ""]],
        [[str(MAX_KEY), "o", ""]],
    ],
)
def test_rows_that_do_not_make_segments_are_corrupt_data(rows: list[object]) -> None:
    with pytest.raises(CorruptData):
        Segments.from_list(rows)  # type: ignore[arg-type]


_columns = st.integers(1, 6).flatmap(
    lambda n: st.tuples(
        st.one_of(
            st.lists(st.integers(0, 50), min_size=n - 1, max_size=n - 1).map(lambda h: [*sorted(h), MAX_KEY]),
            st.lists(st.integers(0, MAX_KEY + 5), min_size=n, max_size=n),  # out of order, past the end
        ),
        st.lists(st.sampled_from([OWNED, FROZEN, NOT_OWNED, "x"]), min_size=n, max_size=n),
        st.lists(st.sampled_from(["", "", "a", "a@1,b@2"]), min_size=n, max_size=n),
    )
)


@given(_columns)
def test_typed_columns_parse_as_the_checked_ones(columns: tuple[list[int], list[str], list[str]]) -> None:
    """The packed record's fast parse (C loops, no merge when merged already) gives what the
    checked parse gives: the same segments, or CorruptData from both."""
    his, states, peers = columns
    try:
        expected: Segments | None = Segments.from_columns(list(his), list(states), list(peers))
    except CorruptData:
        expected = None
    if expected is None:
        with pytest.raises(CorruptData):
            Segments.from_typed_columns(list(his), list(states), list(peers))
    else:
        got = Segments.from_typed_columns(list(his), list(states), list(peers))
        assert got == expected and got.lookup(0) == expected.lookup(0)
        assert got.slice_state(0) == expected.slice_state(0)


# -- the backends' fences ---------------------------------------------------------------------


def _fenced(env: BackendEnv):  # type: ignore[no-untyped-def]
    from dhtcart.backends import open_backend

    return env.track(open_backend(env.url(), context=BackendContext(name="f", fenced=True)))


def test_a_fenced_medium_without_a_record_owns_nothing(env: BackendEnv) -> None:
    b = _fenced(env)
    assert b.ownership() == Ownership.nothing()
    with pytest.raises(Moved) as info:
        b.get(5)
    assert info.value.key == 5 and info.value.epoch == 0 and info.value.state == NOT_OWNED
    with pytest.raises(Moved):
        b.put(5, b"x")
    with pytest.raises(Moved):
        b.delete(5)
    assert b.count() == 0
    plain = env.backend()  # a backend opened on its own is not fenced: it serves every key
    assert plain.put(5, b"x") == 1 and plain.get(5) == Record(1, b"x")


def test_owned_frozen_and_released_ranges(env: BackendEnv) -> None:
    b = _fenced(env)
    b.claim(Ownership(1, 1, Segments.owning([(0, 1000)])))
    assert b.put(10, b"a") == 1 and b.put(500, b"b") == 1
    with pytest.raises(Moved):
        b.put(1001, b"outside")
    own = b.update_ownership(1, 2, [(0, 100, FROZEN, "")], expect=OWNED)
    assert own.epoch == 2 and own.segments.lookup(50) == (FROZEN, "")
    assert b.get(10) == Record(1, b"a")  # a frozen range serves reads...
    with pytest.raises(Moved) as info:  # ...and refuses writes, changing nothing
        b.put(10, b"changed", expected_version=1)
    assert info.value.state == FROZEN and info.value.owner is None
    with pytest.raises(Moved):
        b.delete(10)
    assert b.get(10) == Record(1, b"a")
    assert b.put(500, b"c") == 2  # the rest is untouched
    b.update_ownership(1, 2, [(0, 100, NOT_OWNED, "t")], expect=FROZEN)
    with pytest.raises(Moved) as info:
        b.get(10)
    assert info.value.owner == "t" and info.value.epoch == 2
    with pytest.raises(VersionConflict):  # the version check still runs where the key is owned
        b.put(500, b"d", expected_version=1)


def test_tokens_fence_out_an_older_rebalancer(env: BackendEnv) -> None:
    b = _fenced(env)
    b.claim(Ownership(1, 3, Segments.owning([(0, 1000)])))
    b.update_ownership(5, 1)  # a new rebalancer raises the token, changing nothing else
    assert b.ownership().token == 5 and b.ownership().segments.lookup(7) == (OWNED, "")
    for stale in (
        lambda: b.update_ownership(4, 1, [(0, 10, FROZEN, "")]),
        lambda: b.import_ranges(4, [(2000, 3000)], [(2500, Record(1, b"x"))]),
        lambda: b.drop_ranges(4, [(2000, 3000)]),
    ):
        with pytest.raises(LeaseLost):
            stale()
    assert b.ownership().segments.lookup(7) == (OWNED, "")
    with pytest.raises(LeaseLost, match="not 'f'"):  # expect says what must be there
        b.update_ownership(5, 1, [(0, 10, NOT_OWNED, "x")], expect=FROZEN)


def test_imports_and_drops_never_touch_a_served_range(env: BackendEnv) -> None:
    b = _fenced(env)
    b.claim(Ownership(1, 1, Segments.owning([(0, 1000)])))
    b.put(500, b"mine")
    with pytest.raises(LeaseLost, match="serves"):
        b.import_ranges(1, [(400, 600)], [(500, Record(9, b"a copy"))])
    with pytest.raises(LeaseLost, match="serves"):
        b.drop_ranges(1, [(0, 2000)])
    assert b.ownership().segments.lookup(500) == (OWNED, "")
    # an unserved range: import replaces what is there (idempotent), drop empties it
    assert b.import_ranges(1, [(2000, 3000), (4000, 5000)], [(2500, Record(4, b"x")), (4500, Record(2, b"y"))]) == 2
    assert b.import_ranges(1, [(2000, 3000)], [(2600, Record(1, b"z"))]) == 1
    assert dict(b.scan(1999, 5000)) == {2600: Record(1, b"z"), 4500: Record(2, b"y")}
    assert b.count() == 3
    assert b.boundary(1999, 5000, 1) == (2600, 1)
    assert b.boundary(1999, 5000, 5) == (5000, 2)
    assert b.drop_ranges(1, [(2000, 5000)]) == 2
    assert b.drop_ranges(1, [(2000, 5000)]) == 0
    assert b.count() == 1 and b.get(500) == Record(1, b"mine")


@pytest.mark.parametrize("backend_kind", ["lmdb", "redis"])  # the persistent kinds
def test_the_record_survives_reopening(env: BackendEnv) -> None:
    from dhtcart.backends import open_backend

    url = env.url()
    ctx = BackendContext(name="f", fenced=True)
    first = open_backend(url, context=ctx)
    first.claim(Ownership(4, 2, Segments.owning([(0, 10)])))
    first.close()
    again = env.track(open_backend(url, context=ctx))
    assert again.ownership() == Ownership(4, 2, Segments.owning([(0, 10)]))


@pytest.mark.parametrize("backend_kind", ["redis"])
def test_a_stale_token_is_refused_by_the_server_even_when_the_cache_looks_current(env: BackendEnv) -> None:
    """A rebalancer whose lease expired holds a cached record whose generation a re-created shard
    can reach again; the server checks the token itself, so the old rebalancer changes nothing."""
    from dhtcart.backends import open_backend

    url = env.url()
    ctx = BackendContext(name="x", fenced=True)
    old = env.track(open_backend(url, context=ctx))
    old.claim(Ownership(1, 2, Segments.all()))
    old.update_ownership(2, 1, [(0, 10, OWNED, "")])  # gen 2, cached by the old rebalancer's object
    successor = env.track(open_backend(url, context=ctx))
    successor.destroy()  # the shard leaves and is created again on the same URL
    successor = env.track(open_backend(url, context=ctx))
    successor.claim(Ownership(5, 4, Segments.all()))
    successor.update_ownership(4, 5)  # no change: the generation is still 1
    successor.claim(Ownership(5, 4, Segments.all()))  # generation 2 again, as the old one cached
    assert successor.import_ranges(4, [(100, 200)], [(150, Record(1, b"new data"))]) == 1
    with pytest.raises(LeaseLost):
        old.drop_ranges(2, [(100, 200)])
    with pytest.raises(LeaseLost):
        old.import_ranges(2, [(100, 200)], [])
    with pytest.raises(LeaseLost):
        old.claim(Ownership(1, 2, Segments.owning([(100, 200)])))
    assert list(successor.scan(100, 200)) == [(150, Record(1, b"new data"))]


def test_a_claim_with_an_older_token_is_refused_unless_forced(env: BackendEnv) -> None:
    b = _fenced(env)
    b.claim(Ownership(3, 7, Segments.all()))
    with pytest.raises(LeaseLost):
        b.claim(Ownership(4, 6, Segments.owning([(0, 10)])))
    assert b.ownership().token == 7
    b.claim(Ownership(4, 6, Segments.owning([(0, 10)])), force=True)  # a store in one process takes its shards
    assert b.ownership() == Ownership(4, 6, Segments.owning([(0, 10)]))

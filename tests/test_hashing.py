"""hash_key: exactly the seed's SHA1 rule, for every string."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import dhtcart
from dhtcart.hashing import KEY_SPACE, MAX_KEY, hash_key


def reference(text: str) -> int:
    """The seed's formula, spelled out."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 2**63


@given(st.text())
@example("")
@example("customer-1")
@example("036000291459")
@example("é中文🛒")
@example("\x00")
@example("a" * 10_000)
def test_hash_key_is_sha1_mod_2_63(text: str) -> None:
    assert hash_key(text) == reference(text)


@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1))
def test_hash_key_in_key_space_and_int(text: str) -> None:
    key = hash_key(text)
    assert type(key) is int
    assert 0 <= key <= MAX_KEY < KEY_SPACE == 2**63


def test_known_values() -> None:
    # pinned, so a change of rule can never slip through as "still self-consistent"
    assert hash_key("") == 0x15601890AFD80709  # sha1("") = da39...95601890afd80709
    assert hash_key("") == reference("")
    assert hash_key("alice") == reference("alice")
    assert dhtcart.hash_key is hash_key


def test_distinct_strings_differ() -> None:
    keys = {hash_key(f"customer-{i}") for i in range(10_000)}
    assert len(keys) == 10_000


@pytest.mark.parametrize("bad", [b"bytes", bytearray(b"x"), 42, 4.2, None, ["a"], True, object()])
def test_non_str_is_type_error(bad: object) -> None:
    with pytest.raises(TypeError):
        hash_key(bad)  # type: ignore[arg-type]

"""The checks of dhtcart's arguments, each written once: keys, values, versions, shard names, seconds.

Every layer that takes one of these from a caller checks it here, so a bad
argument gets the same typed error (a :class:`~dhtcart.errors.ValidationError`,
which is a ``ValueError``) wherever it enters, and nothing is stored:

>>> check_key(42)
42
>>> check_key(True)
Traceback (most recent call last):
...
dhtcart.errors.InvalidKey: key must be an int in [0, 2**63), not bool; use dhtcart.hash_key(text) for strings
>>> check_shard_name("shard-7")
'shard-7'
>>> check_seconds("timeout", 0)
Traceback (most recent call last):
...
dhtcart.errors.InvalidInput: timeout: must be a positive number of seconds, got 0

This module imports only :mod:`dhtcart.errors` and :mod:`dhtcart.hashing`.
"""

from __future__ import annotations

import math
import re

from dhtcart.errors import InvalidInput, InvalidKey, InvalidValue
from dhtcart.hashing import KEY_SPACE, MAX_KEY

__all__ = [
    "MAX_VALUE_SIZE",
    "SHARD_NAME_RULE",
    "check_key",
    "check_range",
    "check_seconds",
    "check_shard_name",
    "check_value",
    "check_version",
    "check_weight",
]

#: the largest value a shard accepts, in bytes
MAX_VALUE_SIZE = 16 * 1024 * 1024

#: what a shard (ring node) may be called, in words, for messages
SHARD_NAME_RULE = "1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_key(key: object) -> int:
    """``key`` if it is an ``int`` in ``[0, 2**63)`` (not a ``bool``), else :class:`~dhtcart.errors.InvalidKey`."""
    if type(key) is not int:
        if isinstance(key, bool) or not isinstance(key, int):
            raise InvalidKey(
                f"key must be an int in [0, 2**63), not {type(key).__name__}; use dhtcart.hash_key(text) for strings"
            )
        key = int(key)
    if not 0 <= key < KEY_SPACE:
        raise InvalidKey(f"key {key} is outside [0, 2**63)")
    return key


def check_value(value: object) -> bytes:
    """``value`` as ``bytes`` if it is bytes-like and at most :data:`MAX_VALUE_SIZE`, else
    :class:`~dhtcart.errors.InvalidValue`."""
    if type(value) is bytes:
        data = value
    elif isinstance(value, (bytearray, memoryview)):
        data = bytes(value)
    else:
        raise InvalidValue(f"value must be bytes-like (bytes, bytearray, memoryview), not {type(value).__name__}")
    if len(data) > MAX_VALUE_SIZE:
        raise InvalidValue(f"value of {len(data)} bytes exceeds the limit of {MAX_VALUE_SIZE} bytes")
    return data


def check_version(version: object, what: str = "expected_version") -> int:
    """``version`` if it is an ``int >= 0`` (not a ``bool``), else :class:`~dhtcart.errors.InvalidValue`."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise InvalidValue(f"{what} must be an int >= 0, not {version!r}")
    return version


def check_range(lo: object, hi: object) -> tuple[int, int]:
    """``(lo, hi)`` if both are ints in ``[-1, 2**63 - 1]`` (a range ``(lo, hi]`` of keys)."""
    for name, bound in (("lo", lo), ("hi", hi)):
        if isinstance(bound, bool) or not isinstance(bound, int):
            raise InvalidKey(f"{name} must be an int, not {type(bound).__name__}")
    assert isinstance(lo, int) and isinstance(hi, int)
    if not (-1 <= lo <= MAX_KEY and -1 <= hi <= MAX_KEY):
        raise InvalidKey(f"range ({lo}, {hi}] must lie within [-1, 2**63 - 1]")
    return lo, hi


def check_shard_name(name: object, field: str = "name") -> str:
    """``name`` if it is a valid shard (ring node) name, else :class:`~dhtcart.errors.InvalidInput`.

    One rule for the store, the ring and the command line: names are written
    into the membership document, shard directories and Redis keys.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidInput(field, f"a shard name must be {SHARD_NAME_RULE}; got {name!r}")
    return name


def check_weight(weight: object) -> int:
    """``weight`` if it is a positive ``int`` (not a ``bool``), else :class:`~dhtcart.errors.InvalidInput`."""
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        raise InvalidInput("weight", f"must be a positive int, got {weight!r}")
    return weight


def check_seconds(name: str, value: object, *, zero: bool = False) -> float:
    """``value`` as a float if it is a finite number of seconds above 0 (or ``zero`` allowed),
    else :class:`~dhtcart.errors.InvalidInput` naming ``name``.

    A string that reads as a number is accepted (URL options and environment
    variables arrive as text).
    """
    number: float
    if isinstance(value, bool):
        number = math.nan
    elif isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
    else:
        number = math.nan
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
        what = "a number of seconds >= 0" if zero else "a positive number of seconds"
        raise InvalidInput(name, f"must be {what}, got {value!r}")
    return number

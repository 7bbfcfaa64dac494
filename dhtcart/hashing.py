"""Keys: SHA1 of a string, as a 63-bit integer.

``hash_key(s)`` equals ``int(hashlib.sha1(s.encode("utf-8")).hexdigest(), 16) % 2**63``
for every string (the seed's rule). Reducing modulo ``2**63`` keeps only the low
63 bits, which all live in the digest's last 8 bytes, so converting those 8 bytes
is enough and avoids the hex round trip.
"""

from __future__ import annotations

import struct
from hashlib import sha1 as _sha1

from dhtcart.errors import InvalidInput

__all__ = ["KEY_BITS", "KEY_SPACE", "MAX_KEY", "hash_key"]

KEY_BITS = 63
KEY_SPACE = 1 << KEY_BITS  #: number of keys; the ring is ``[0, KEY_SPACE)``
MAX_KEY = KEY_SPACE - 1  #: the largest key

_low_bytes = struct.Struct(">Q").unpack_from  # the digest's last 8 bytes, as an int, without a slice


def hash_key(text: str) -> int:
    """Return the 63-bit key of ``text``: SHA1 of its UTF-8 bytes, mod ``2**63``.

    >>> hash_key("customer-1") == int(__import__("hashlib").sha1(b"customer-1").hexdigest(), 16) % 2**63
    True
    >>> 0 <= hash_key("") < 2**63
    True

    Cost: one SHA1 of the text plus an 8-byte integer conversion.
    """
    try:
        data = text.encode()
    except AttributeError:
        raise InvalidInput("text", f"hash_key() takes a str, not {type(text).__name__}") from None
    low: int = _low_bytes(_sha1(data).digest(), 12)[0]
    return low & MAX_KEY

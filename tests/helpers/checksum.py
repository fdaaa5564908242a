"""The one RFC 1071 Internet checksum of the test suite and the benchmarks.

Written here, independently of the engine's C code, so that a test never
checks the engine's arithmetic with the engine's own arithmetic. Only the
plain function: no frame building (frames.py) and no imports beyond the
standard library, so that guest-side programs can use it too.
"""

from __future__ import annotations

import struct


def rfc1071(data: bytes) -> int:
    """The checksum of @data as it is stored in a header: the one's
    complement of the one's-complement sum of its 16-bit words (an odd
    length is padded with a zero byte). Summing a header that holds its own
    correct checksum gives 0."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

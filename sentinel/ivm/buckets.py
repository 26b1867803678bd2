"""Key buckets: how per-key window models lock and watermark their keys, and how writers share keys out.

A key's bucket is `hashtext(first key column) & (BUCKETS - 1)`, computed in SQL by the generated
maintenance (`bucket_sql`). Writers that send each bucket's rows over one connection of their own
(`bucket`, the same hash in Python) maintain disjoint keys in parallel: their transactions never
wait for each other's key locks.
"""
from __future__ import annotations

BUCKETS = 64  # a power of two
LOCK_CLASS = 724581239  # pg_advisory_xact_lock(LOCK_CLASS, bucket) holds a bucket's keys

_M = 0xFFFFFFFF


def bucket_sql(expr: str) -> str:
    """SQL for the bucket of a key whose first column is `expr` (a null key: bucket 0)."""
    return f"coalesce(hashtext(({expr})::text) & {BUCKETS - 1}, 0)"


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def hashtext(text: str) -> int:
    """PostgreSQL's hashtext() of `text` (deterministic collations), as its unsigned 32 bits:
    Bob Jenkins' lookup3 `hash_bytes` of the UTF-8 bytes (src/common/hashfn.c)."""
    k = text.encode()
    length = len(k)
    a = b = c = (0x9E3779B9 + length + 3923095) & _M
    i = 0
    while length - i >= 12:
        a = (a + int.from_bytes(k[i:i + 4], "little")) & _M
        b = (b + int.from_bytes(k[i + 4:i + 8], "little")) & _M
        c = (c + int.from_bytes(k[i + 8:i + 12], "little")) & _M
        # mix(a, b, c)
        a = (a - c) & _M; a ^= _rot(c, 4); c = (c + b) & _M  # noqa: E702
        b = (b - a) & _M; b ^= _rot(a, 6); a = (a + c) & _M  # noqa: E702
        c = (c - b) & _M; c ^= _rot(b, 8); b = (b + a) & _M  # noqa: E702
        a = (a - c) & _M; a ^= _rot(c, 16); c = (c + b) & _M  # noqa: E702
        b = (b - a) & _M; b ^= _rot(a, 19); a = (a + c) & _M  # noqa: E702
        c = (c - b) & _M; c ^= _rot(b, 4); b = (b + a) & _M  # noqa: E702
        i += 12
    rest = k[i:]
    n = len(rest)
    # the last 11 bytes; the lowest byte of c is reserved for the length
    if n > 8:
        c = (c + (int.from_bytes(rest[8:n], "little") << 8)) & _M
    if n > 4:
        b = (b + int.from_bytes(rest[4:min(n, 8)], "little")) & _M
    if n > 0:
        a = (a + int.from_bytes(rest[0:min(n, 4)], "little")) & _M
    # final(a, b, c)
    c ^= b; c = (c - _rot(b, 14)) & _M  # noqa: E702
    a ^= c; a = (a - _rot(c, 11)) & _M  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & _M  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & _M  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & _M  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & _M  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & _M  # noqa: E702
    return c


def bucket(key: str | None) -> int:
    """The bucket `bucket_sql` gives a key whose first column's text is `key`."""
    return 0 if key is None else hashtext(key) & (BUCKETS - 1)

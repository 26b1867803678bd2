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


def buckets(keys: list[str]) -> list[int]:
    """`bucket` of each key, vectorised (numpy): the same lookup3 over every key of one byte length
    at once, about 20 times faster than one key at a time. The loader's writers call it for the cards
    they have not seen yet."""
    import numpy as np

    out = [0] * len(keys)
    by_length: dict[int, list[tuple[int, bytes]]] = {}
    for i, key in enumerate(keys):
        raw = key.encode()
        by_length.setdefault(len(raw), []).append((i, raw))
    for length, items in by_length.items():
        blocks = length // 12
        width = 12 * (blocks + 1)  # the tail, zero-padded, adds as whole words (c's low byte stays free)
        data = b"".join(raw + b"\0" * (width - length) for _, raw in items)
        w = np.frombuffer(data, dtype="<u4").reshape(len(items), width // 4).astype(np.uint32)
        a = np.full(len(items), (0x9E3779B9 + length + 3923095) & _M, dtype=np.uint32)
        b = a.copy()
        c = a.copy()

        def rot(x, k):
            return (x << np.uint32(k)) | (x >> np.uint32(32 - k))

        for j in range(blocks):
            a += w[:, 3 * j]
            b += w[:, 3 * j + 1]
            c += w[:, 3 * j + 2]
            a -= c; a ^= rot(c, 4); c += b  # noqa: E702
            b -= a; b ^= rot(a, 6); a += c  # noqa: E702
            c -= b; c ^= rot(b, 8); b += a  # noqa: E702
            a -= c; a ^= rot(c, 16); c += b  # noqa: E702
            b -= a; b ^= rot(a, 19); a += c  # noqa: E702
            c -= b; c ^= rot(b, 4); b += a  # noqa: E702
        a += w[:, 3 * blocks]
        b += w[:, 3 * blocks + 1]
        c += w[:, 3 * blocks + 2] << np.uint32(8)
        c ^= b; c -= rot(b, 14)  # noqa: E702
        a ^= c; a -= rot(c, 11)  # noqa: E702
        b ^= a; b -= rot(a, 25)  # noqa: E702
        c ^= b; c -= rot(b, 16)  # noqa: E702
        a ^= c; a -= rot(c, 4)  # noqa: E702
        b ^= a; b -= rot(a, 14)  # noqa: E702
        c ^= b; c -= rot(b, 24)  # noqa: E702
        for (i, _), v in zip(items, (c & np.uint32(BUCKETS - 1)).tolist()):
            out[i] = v
    return out

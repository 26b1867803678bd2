"""Key buckets: the Python port of hashtext() and `bucket` agree with the server, bit for bit."""
from __future__ import annotations

import random

import psycopg
import pytest

from sentinel.ivm.buckets import BUCKETS, bucket, bucket_sql, buckets, hashtext

# Around the 12-byte blocks of lookup3 (the tail switch: 0, 1..4, 5..8, 9..11 bytes left),
# multibyte UTF-8 straddling block edges, and the generator's ids.
EDGE_CASES = [
    "",
    *("abcdefghijklmnopqrstuvwxyz"[:n] for n in range(1, 14)),
    *("0123456789abcdefghijklmnopqrstuvwxyz"[:n] for n in range(23, 26)),
    "x" * 36, "x" * 37, "\x7f" * 12, "\xff" * 11,
    "é", "日本", "€uro", "ÿ" * 6, "aé" * 4, "a日本語テキスト", "😀", "😀" * 3, "a😀b😀c😀",
    "\u00a0\u2028\ufeff", "tab\there", "back\\slash", "new\nline", " ", "  leading and trailing  ",
    "c003-00053968", "c000-00000000", "c999-99999999", "c012-00100001", "t0000001", "high_value",
]

_ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz0123456789-_",
    "".join(map(chr, range(1, 128))),  # all of ASCII but NUL, which text cannot hold
    "àéîõüßçñÿĀ€™",  # two and three bytes
    "日本語中文한국어ไทย",  # three bytes
    "😀🎉🂡𝄞",  # four bytes
]


def _random_strings(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        alphabet = "".join(rng.sample(_ALPHABETS, rng.randint(1, len(_ALPHABETS))))
        out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))))
    return out


def _card_ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"c{rng.randrange(1000):03d}-{rng.randrange(10**8):08d}" for _ in range(n)]


@pytest.fixture(scope="module")
def conn(module_db):
    with psycopg.connect(module_db.dsn, autocommit=True) as conn:
        assert conn.execute("show server_encoding").fetchone()[0] == "UTF8"
        yield conn


def _server_hashes(conn: psycopg.Connection, keys: list[str]) -> list[int]:
    rows = conn.execute("select hashtext(k) from unnest(%s::text[]) with ordinality as u(k, i) order by i",
                        (keys,)).fetchall()
    return [v & 0xFFFFFFFF for (v,) in rows]


def test_hashtext_matches_the_server_on_edge_cases(conn) -> None:
    keys = EDGE_CASES
    assert sorted({len(k.encode()) for k in keys}) >= list(range(0, 14))  # every tail length covered
    assert [hashtext(k) for k in keys] == _server_hashes(conn, keys)


def test_hashtext_matches_the_server_on_random_strings(conn) -> None:
    keys = _random_strings(400, seed=20250106) + _card_ids(200, seed=7)
    server = _server_hashes(conn, keys)
    mismatches = [(k, hashtext(k), s) for k, s in zip(keys, server) if hashtext(k) != s]
    assert mismatches == []
    assert any(s >= 2**31 for s in server)  # negative int4 on the server: the unsigned view is compared


def test_hashtext_is_unsigned_32_bits() -> None:
    keys = set(EDGE_CASES + _random_strings(200, seed=3))
    values = [hashtext(k) for k in keys]
    assert all(0 <= v <= 0xFFFFFFFF for v in values)
    assert len(set(values)) == len(keys)  # distinct inputs, no collision in so few


def test_bucket_matches_bucket_sql_on_the_server(conn) -> None:
    sample = EDGE_CASES[:20] + _card_ids(30, seed=11) + _random_strings(20, seed=12)
    query = "select " + bucket_sql("%s::text")
    for key in sample:
        assert bucket(key) == conn.execute(query, (key,)).fetchone()[0], key
    many = _card_ids(2000, seed=13)
    rows = conn.execute(f"select {bucket_sql('k')} from unnest(%s::text[]) with ordinality as u(k, i) order by i",
                        (many,)).fetchall()
    assert [bucket(k) for k in many] == [b for (b,) in rows]


def test_buckets_cover_the_range_for_card_ids() -> None:
    buckets = {bucket(k) for k in _card_ids(2000, seed=14)}
    assert buckets == set(range(BUCKETS))


def test_vectorised_buckets_equal_one_at_a_time() -> None:
    """`buckets` (numpy, by byte length) gives what `bucket` gives, for every tail length."""
    rng = random.Random(11)
    keys = ["", "a", "é", "漢字"] + ["".join(rng.choices("abcxyz0123456789-é", k=n)) for n in range(40) for _ in range(5)]
    keys += [f"c{s:03d}-{i:08d}" for s in (1, 3) for i in range(0, 500_000, 997)]
    assert buckets(keys) == [bucket(k) for k in keys]

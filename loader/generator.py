"""A labelled synthetic card-transaction stream: Faker entity pools, numpy draws, fraud scenarios.

Entities (cities, merchants) are made once with Faker's data; cards are numpy arrays (home city,
spending scale, last use), so millions of cards cost a few tens of MB. Transactions are drawn in
numpy chunks. Fraud scenarios and legitimate look-alikes are episodes scheduled on a priority
queue keyed by delivery time, which also carries late (out-of-order) events.

Legitimate traffic is kept clean of the detection rules by construction: a card makes about one
purchase per two simulated hours, card-present purchases lie within ~10 km of the card's home
city, amounts stay under 1,500, and a card never changes device. Each scenario makes its own
pattern unambiguous (see the scenario functions), and cards taking part in an episode are kept
out of normal traffic until a real traveller could be back home. The one rule normal traffic can
trip is the amount spike: an occasional electronics or travel purchase far above a card's last few
everyday ones, as real spending has.
"""

from __future__ import annotations

import heapq
import math
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from itertools import islice, repeat

import numpy as np
from faker import Faker
from faker.providers.geo import Provider as GeoProvider

from loader.schema import FRAUD_PATTERNS, INDEX, LOOKALIKE_PATTERNS
from loader.writer import TIMESTAMP_FORMAT, second_text, timestamp_text

SCENARIOS = FRAUD_PATTERNS + LOOKALIKE_PATTERNS
# Share of all transactions that belong to each scenario (fraud scenarios ~1.5 %, look-alikes
# ~0.8 %; an amount spike's episode is mostly its everyday purchases, one row in 11 labelled).
DEFAULT_SHARES: dict[str, float] = {
    "high_value": 0.002,
    "card_testing": 0.003,
    "velocity": 0.003,
    "impossible_travel": 0.002,
    "account_takeover": 0.001,
    "cross_border": 0.002,
    "amount_spike": 0.002,
    "legit_flight": 0.004,
    "legit_busy_shopper": 0.004,
}
DEFAULT_START = datetime(2025, 1, 6, tzinfo=timezone.utc)
EARTH_RADIUS_KM = 6371.0

# Home countries with their share of cards; merchants and travel reach every country Faker knows.
HOME_COUNTRIES = {
    "US": 0.42, "GB": 0.08, "DE": 0.07, "FR": 0.06, "CA": 0.05, "ES": 0.04, "IT": 0.04,
    "NL": 0.03, "AU": 0.03, "JP": 0.03, "BR": 0.03, "MX": 0.03, "IN": 0.03, "BE": 0.02,
    "CZ": 0.02, "PH": 0.02,
}
# category: (median amount, log-sigma, share of card-present purchases)
CATEGORIES = {
    "grocery": (42.0, 0.55, 0.30),
    "restaurant": (31.0, 0.50, 0.22),
    "fuel": (48.0, 0.30, 0.12),
    "retail": (65.0, 0.75, 0.14),
    "pharmacy": (22.0, 0.60, 0.07),
    "entertainment": (38.0, 0.60, 0.06),
    "electronics": (180.0, 0.80, 0.05),
    "travel": (320.0, 0.70, 0.04),
}
ECOM_CATEGORIES = {
    "retail": 0.40, "electronics": 0.20, "entertainment": 0.15, "travel": 0.10,
    "digital_goods": 0.15,
}
CATEGORY_PARAMS = {**{k: (v[0], v[1]) for k, v in CATEGORIES.items()}, "digital_goods": (15.0, 0.7)}
MERCHANTS_PER_CITY = 12
ECOM_MERCHANTS = 400
LEGIT_MAX_AMOUNT = 1500.0
HOURLY_RHYTHM = np.array(
    [0.25, 0.15, 0.10, 0.10, 0.15, 0.30, 0.60, 0.90, 1.10, 1.20, 1.30, 1.45,
     1.60, 1.50, 1.35, 1.30, 1.40, 1.60, 1.75, 1.70, 1.45, 1.10, 0.75, 0.45]
)
HOURLY_RHYTHM = HOURLY_RHYTHM / HOURLY_RHYTHM.mean()
AMOUNT_SPIKE_HISTORY = 10  # the rule's frame: the previous 10 transactions (dbt var amount_spike_history_txns)
CARD_SECONDS_PER_TXN = 7200.0  # a normal card buys about once per two (simulated) hours
MAX_CARDS = 2_000_000
CHUNK = 4096


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate; deterministic for a given seed (event times too when unpaced)."""

    seed: int = 0
    count: int | None = None
    rate: float | None = None
    sim_rate: float = 20.0
    start: datetime | None = None
    shares: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))
    late_share: float = 0.0
    max_delay_s: float = 30.0
    cards: int | None = None

    @property
    def paced(self) -> bool:
        """Paced streams stamp events with the wall clock at `rate` events per second."""
        return self.rate is not None

    def card_count(self) -> int:
        """Enough cards that each buys about once per two hours at the stream's event rate."""
        if self.cards is not None:
            return max(100, self.cards)
        rate = self.rate if self.rate is not None else self.sim_rate
        return int(min(MAX_CARDS, max(10_000, rate * CARD_SECONDS_PER_TXN)))


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance, R = 6371.0 km, as the impossible_travel rule computes it."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:24]


class World:
    """The entity pools: cities, merchants and cards, made once per seed."""

    def __init__(self, seed: int, n_cards: int) -> None:
        fake = Faker()
        fake.seed_instance(seed)
        rng = np.random.default_rng([seed, 1])
        by_country: dict[str, list[tuple]] = {}
        for lat, lon, place, cc, _tz in GeoProvider.land_coords:
            by_country.setdefault(cc, []).append((float(lat), float(lon), place, cc))
        cities: list[tuple] = []
        weights: list[float] = []
        for cc in sorted(by_country):
            places = by_country[cc][:12]
            share = HOME_COUNTRIES.get(cc, 0.0)
            for place in places:
                cities.append(place)
                weights.append(share / len(places))
        self.city_lat = np.array([c[0] for c in cities])
        self.city_lon = np.array([c[1] for c in cities])
        self.city_country = [c[3] for c in cities]
        w = np.array(weights)
        self.home_city_weights = w / w.sum()
        self.countries = sorted(by_country)

        # Card-present merchants: MERCHANTS_PER_CITY per city, the last one an ATM.
        names = [_slug(fake.company()) for _ in range(500)]  # merchant names: Faker, once
        cats = list(CATEGORIES)
        cat_p = np.array([CATEGORIES[c][2] for c in cats])
        cat_p = cat_p / cat_p.sum()
        n_cities = len(cities)
        self.merchant_id: list[str] = []
        self.merchant_cat: list[str] = []
        self.merchant_lat: list[float] = []
        self.merchant_lon: list[float] = []
        for city in range(n_cities):
            for k in range(MERCHANTS_PER_CITY):
                is_atm = k == MERCHANTS_PER_CITY - 1
                cat = "atm" if is_atm else cats[int(rng.choice(len(cats), p=cat_p))]
                name = "atm" if is_atm else names[int(rng.integers(len(names)))]
                self.merchant_id.append(f"m{len(self.merchant_id):05d}-{name}")
                self.merchant_cat.append(cat)
                # within ~8 km of the city centre
                r_km = 8.0 * math.sqrt(rng.random())
                theta = rng.random() * 2 * math.pi
                dlat = r_km * math.cos(theta) / 111.0
                dlon = r_km * math.sin(theta) / (111.0 * max(0.2, math.cos(math.radians(cities[city][0]))))
                self.merchant_lat.append(round(cities[city][0] + dlat, 6))
                self.merchant_lon.append(round(max(-180.0, min(180.0, cities[city][1] + dlon)), 6))
        # E-commerce merchants: no coordinates; country of registration, mostly home countries.
        ecats = list(ECOM_CATEGORIES)
        ecat_p = np.array(list(ECOM_CATEGORIES.values()))
        home_cc = list(HOME_COUNTRIES)
        home_p = np.array(list(HOME_COUNTRIES.values()))
        home_p = home_p / home_p.sum()
        self.ecom_id: list[str] = []
        self.ecom_cat: list[str] = []
        self.ecom_country: list[str] = []
        self.ecom_by_country: dict[str, list[int]] = {}
        for k in range(ECOM_MERCHANTS):
            cc = home_cc[int(rng.choice(len(home_cc), p=home_p))] if k % 5 else self.countries[k % len(self.countries)]
            self.ecom_id.append(f"e{k:04d}-{names[k % len(names)]}")
            self.ecom_cat.append(ecats[int(rng.choice(len(ecats), p=ecat_p))])
            self.ecom_country.append(cc)
            self.ecom_by_country.setdefault(cc, []).append(k)
        self.ecom_countries = sorted(self.ecom_by_country)

        # One table of every merchant (card-present, then online) for the vectorized draws.
        self.n_physical = len(self.merchant_id)
        self.all_id = self.merchant_id + self.ecom_id
        self.all_cat = self.merchant_cat + self.ecom_cat
        self.all_channel = ["atm" if c == "atm" else "pos" for c in self.merchant_cat] + ["ecom"] * ECOM_MERCHANTS
        self.all_country = [self.city_country[k // MERCHANTS_PER_CITY] for k in range(self.n_physical)] + self.ecom_country
        self.all_lat = self.merchant_lat + [None] * ECOM_MERCHANTS
        self.all_lon = self.merchant_lon + [None] * ECOM_MERCHANTS
        # The same merchant fields as COPY text, for rows the generator formats itself.
        self.all_copy_head = [f"{i}\t{c}" for i, c in zip(self.all_id, self.all_cat)]
        null = "\\N"
        self.all_copy_place = [
            f"{ch}\t{cc}\t{null if la is None else la}\t{null if lo is None else lo}"
            for ch, cc, la, lo in zip(self.all_channel, self.all_country, self.all_lat, self.all_lon)
        ]
        cat_names = sorted(CATEGORY_PARAMS)
        cat_index = {c: k for k, c in enumerate(cat_names)}
        self.cat_median = np.array([CATEGORY_PARAMS[c][0] for c in cat_names] + [0.0])
        self.cat_sigma = np.array([CATEGORY_PARAMS[c][1] for c in cat_names] + [0.0])
        self.all_cat_idx = np.array([cat_index.get(c, len(cat_names)) for c in self.all_cat])
        # Online merchants of each city's country, as flat arrays (start, length per city).
        flat: list[int] = []
        starts, lengths = [], []
        for city in range(n_cities):
            pool = self.ecom_by_country.get(self.city_country[city], [])
            starts.append(len(flat))
            lengths.append(len(pool))
            flat.extend(pool)
        self.pool_flat = np.array(flat + [0], dtype=np.int64)
        self.pool_start = np.array(starts, dtype=np.int64)
        self.pool_len = np.array(lengths, dtype=np.int64)

        # Cards: numpy arrays, so the pool scales to millions.
        self.n_cards = n_cards
        self.card_city = rng.choice(n_cities, size=n_cards, p=self.home_city_weights).astype(np.int32)
        self.card_scale = np.exp(rng.normal(0.0, 0.35, size=n_cards)).astype(np.float32)
        self.device_salt = int(rng.integers(0, 2**40))
        self.card_format = f"c{seed % 1000:03d}-%08d"
        # A normal purchase as COPY text from card_id to device_id, tab-led and tab-ended: the
        # fields of `all_copy_head` and `all_copy_place` and the ids in their own formats; and
        # on to the end of the line, given the event time's second (text) and microsecond.
        self.copy_body_format = (
            f"\t{self.card_format}\t{CUSTOMER_FORMAT}\t%s\t{AMOUNT_FORMAT}\tUSD\t%s\t{DEVICE_FORMAT}\t"
        )
        self.copy_rest_format = self.copy_body_format + TIMESTAMP_FORMAT + NORMAL_TAIL

    # Each id has one %-format, for one card (`card_id`...: rows of episodes) and for a chunk of
    # normal purchases (`Generator._bodies`); the numbers are computed by expressions valid for
    # an int and for a numpy int64 array alike.

    def card_id(self, card: int) -> str:
        return self.card_format % card

    def customer_id(self, card: int) -> str:
        return CUSTOMER_FORMAT % _customer_number(card)

    def device_id(self, card: int) -> str:
        return DEVICE_FORMAT % self.device_number(card)

    def device_number(self, card):
        # A bijection of the card number, so two cards never share a device. In int64 for
        # arrays: MAX_CARDS * 0x9E3779B1 < 2**63.
        return ((card * 0x9E3779B1) ^ self.device_salt) & 0xFFFFFFFFFF


CUSTOMER_FORMAT = "cu-%08d"
DEVICE_FORMAT = "dev-%010x"
AMOUNT_FORMAT = "%.2f"  # a float amount to whole cents, as text and as Decimal(text)


def _customer_number(card):
    # Every fifth customer holds two cards.
    return card * 4 // 5


_UTC = timezone.utc


# A normal purchase's COPY text after its event time: is_fraud false, no pattern.
NORMAL_TAIL = "\tf\t\\N"


def _in_slices(items: Iterator, size: int = 256) -> list:
    """list(items), consumed `size` at a time. One list() over a whole chunk is a single C call
    of several ms, and CPython hands the GIL over only between bytecodes: the writer's sender
    thread, woken by the socket, would wait that long while the server idles."""
    out: list = []
    while part := list(islice(items, size)):
        out += part
    return out


def _event_columns(times: np.ndarray, copy_lines: bool) -> list[list]:
    """A chunk's event times as the row tuples hold them (datetime), or with `copy_lines` as
    the columns of their COPY text: the second's text and the microsecond.

    Those are the second and microsecond that datetime.fromtimestamp rounds to, computed in
    numpy by CPython's own arithmetic (modf, times 1e6, round half to even, carry), so that
    a line and its tuple always agree (tested).
    """
    if not copy_lines:
        return [list(map(datetime.fromtimestamp, times.tolist(), repeat(_UTC)))]
    whole = np.trunc(times)
    micro = np.rint((times - whole) * 1e6)
    carry = np.where(micro >= 1e6, 1.0, 0.0) - np.where(micro < 0, 1.0, 0.0)  # into the next/last second
    seconds = (whole + carry).astype(np.int64).tolist()
    texts = {second: second_text(second) for second in set(seconds)}
    return [list(map(texts.__getitem__, seconds)), (micro - carry * 1e6).astype(np.int64).tolist()]


class Generator:
    """Iterates rows (tuples in COLUMNS order); use `generate(config)`."""

    def __init__(self, config: GeneratorConfig, *, wall_start: float | None = None) -> None:
        for name, share in config.shares.items():
            if name not in SCENARIOS:
                raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
            if not 0.0 <= share <= 0.5:
                raise ValueError(f"share of {name} must be within 0..0.5, got {share}")
        if not 0.0 <= config.late_share <= 1.0:
            raise ValueError(f"late share must be within 0..1, got {config.late_share}")
        if config.rate is not None and config.rate <= 0:
            raise ValueError(f"rate must be > 0, got {config.rate}")
        self.config = config
        self.world = World(config.seed, config.card_count())
        self.rng = np.random.default_rng([config.seed, 2])
        self.r = random.Random(config.seed)
        n = self.world.n_cards
        self.seen = np.zeros(n, dtype=bool)  # cards with at least one transaction so far
        self.busy_until: dict[int, float] = {}  # cards in an episode, kept out of normal traffic
        self.heap: list[tuple[float, int, tuple]] = []
        self.seq = 0
        self.txn_format = f"t{config.seed:x}-%010d"
        if config.paced:
            start = config.start.timestamp() if config.start else wall_start
            self.clock = float(start if start is not None else datetime.now(timezone.utc).timestamp())
        else:
            self.clock = (config.start or DEFAULT_START).timestamp()
        shares = {k: float(config.shares.get(k, 0.0)) for k in SCENARIOS}
        mean_events = {
            "high_value": 1.0, "card_testing": 9.0, "velocity": 6.5, "impossible_travel": 2.0,
            "account_takeover": 2.0, "cross_border": 4.0, "amount_spike": 11.0, "legit_flight": 3.0,
            "legit_busy_shopper": 5.5,
        }
        self.scenario_names = [k for k in SCENARIOS if shares[k] > 0]
        starts = np.array([shares[k] / mean_events[k] for k in self.scenario_names])
        self.scenario_cum = np.cumsum(starts).tolist() if len(starts) else []
        self.p_episode = self.scenario_cum[-1] if self.scenario_cum else 0.0
        self._used: list[int] = []  # cards of normal rows made since the last chunk
        self._heap_seq = 0

    # -- numpy chunks -----------------------------------------------------------------------

    def _refill(self, copy_lines: bool) -> None:
        """Draw the next CHUNK normal purchases at once (numpy) and make their fields in bulk.

        All but the txn_id (numbered in stream order) and, when paced, the event time (the
        clock ticks per delivered row) is made here, a chunk at a time, by map() and zip():
        the loop in `batches` only adds those to each row.
        """
        g = self.rng
        w = self.world
        if self._used:
            self.seen[self._used] = True
            self._used.clear()
        if len(self.busy_until) > 10_000:
            for card in [c for c, u in self.busy_until.items() if u <= self.clock]:
                del self.busy_until[card]
        cards = g.integers(0, w.n_cards, size=CHUNK)
        cities = w.card_city[cards]
        u_chan = g.random(CHUNK)
        r = g.integers(0, MERCHANTS_PER_CITY - 1, size=CHUNK)
        u_misc = g.random(CHUNK)
        z = g.standard_normal(CHUNK)
        pos = cities * MERCHANTS_PER_CITY + r
        atm = cities * MERCHANTS_PER_CITY + (MERCHANTS_PER_CITY - 1)
        plen = w.pool_len[cities]
        home = w.pool_flat[w.pool_start[cities] + r % np.maximum(plen, 1)]
        anywhere = (u_misc * ECOM_MERCHANTS).astype(np.int64) % ECOM_MERCHANTS
        # 1 % of online purchases go abroad: more would make normal cards look cross-border
        ecom = w.n_physical + np.where((u_misc < 0.99) & (plen > 0), home, anywhere)
        merchant = np.where(u_chan < 0.68, pos, np.where(u_chan < 0.95, ecom, atm))
        cat = w.all_cat_idx[merchant]
        amount = w.cat_median[cat] * w.card_scale[cards] * np.exp(w.cat_sigma[cat] * z)
        amount = np.clip(amount, 1.0, LEGIT_MAX_AMOUNT)
        amount = np.where(u_chan >= 0.95, 20.0 * (1 + np.floor(u_misc * 15)), amount)
        self._card = cards.tolist()
        self._merchant = merchant.tolist()
        self._amount = amount.tolist()
        self._u_ep = g.random(CHUNK).tolist()
        self._u_late = g.random(CHUNK).tolist()
        self._times = self._time_columns = None
        if not self.config.paced:
            hour = int(self.clock // 3600.0) % 24
            gaps = g.exponential(1.0 / (self.config.sim_rate * HOURLY_RHYTHM[hour]), size=CHUNK)
            times = self.clock + np.cumsum(gaps)
            self._times = times.tolist()
            self._time_columns = _event_columns(times, copy_lines)
        self._body = self._bodies(cards, self._merchant, self._amount, copy_lines, self._time_columns)

    def _bodies(self, cards: np.ndarray, merchants: list[int], amounts: list[float], copy_lines: bool,
                time_columns: list[list] | None) -> list[tuple] | list[str]:
        """Normal purchases' fields after the txn_id: a tuple each, or with `copy_lines` their
        COPY text. They run from card_id to device_id (`World.copy_body_format`), or given the
        event times (`_event_columns`) to the end of the row (`World.copy_rest_format`)."""
        w = self.world
        customers = _customer_number(cards).tolist()
        devices = w.device_number(cards).tolist()
        cards = cards.tolist()
        timed = time_columns is not None

        def column(values: list) -> Iterator:
            return map(values.__getitem__, merchants)

        if copy_lines:
            fmt = w.copy_rest_format if timed else w.copy_body_format
            return _in_slices(map(fmt.__mod__, zip(
                cards, customers, column(w.all_copy_head), amounts, column(w.all_copy_place), devices,
                *(time_columns if timed else ()),
            )))
        fields = [
            map(w.card_format.__mod__, cards), map(CUSTOMER_FORMAT.__mod__, customers),
            column(w.all_id), column(w.all_cat), map(Decimal, map(AMOUNT_FORMAT.__mod__, amounts)), repeat("USD"),
            column(w.all_channel), column(w.all_country), column(w.all_lat), column(w.all_lon),
            map(DEVICE_FORMAT.__mod__, devices),
        ]
        if timed:
            fields += [*time_columns, repeat(False), repeat(None)]
        return _in_slices(zip(*fields))

    # -- rows -------------------------------------------------------------------------------

    def _row(
        self,
        t: float,
        card: int,
        merchant_id: str,
        category: str,
        amount: float,
        channel: str,
        country: str,
        lat: float | None,
        lon: float | None,
        *,
        device: str | None = None,
        is_fraud: bool = False,
        pattern: str | None = None,
    ) -> tuple:
        w = self.world
        self.seq += 1
        return (
            self.txn_format % self.seq,
            w.card_id(card),
            w.customer_id(card),
            merchant_id,
            category,
            Decimal(AMOUNT_FORMAT % amount),
            "USD",
            channel,
            country,
            lat,
            lon,
            device if device is not None else w.device_id(card),
            datetime.fromtimestamp(t, _UTC),
            is_fraud,
            pattern,
        )

    def _legit_amount(self, category: str, card: int, z: float) -> float:
        median, sigma = CATEGORY_PARAMS[category]
        amount = median * float(self.world.card_scale[card]) * math.exp(sigma * z)
        return min(LEGIT_MAX_AMOUNT, max(1.0, amount))

    def _local_purchase(self, t: float, card: int, **labels) -> tuple:
        """A card-present purchase at a merchant in the card's home city."""
        w = self.world
        city = int(w.card_city[card])
        m = city * MERCHANTS_PER_CITY + self.r.randrange(MERCHANTS_PER_CITY - 1)
        cat = w.merchant_cat[m]
        amount = self._legit_amount(cat, card, self.r.gauss(0, 1))
        return self._row(
            t, card, w.merchant_id[m], cat, amount, "pos", w.city_country[city],
            w.merchant_lat[m], w.merchant_lon[m], **labels,
        )

    def _other_card(self, t: float, i: int, copy_lines: bool) -> tuple[int, tuple | str]:
        """Chunk row i's card is in an episode: another card makes the same kind of purchase near
        its own home. (card, body as `_bodies` makes it for row i); rare, so one at a time."""
        w = self.world
        for _ in range(8):
            card = self.r.randrange(w.n_cards)
            if self.busy_until.get(card, -math.inf) <= t:
                break
        m = self._merchant[i]
        if w.all_channel[m] != "ecom":
            m = int(w.card_city[card]) * MERCHANTS_PER_CITY + (m % MERCHANTS_PER_CITY)
        time_columns = None if self._time_columns is None else [[column[i]] for column in self._time_columns]
        body = self._bodies(np.array([card], dtype=np.int64), [m], [self._amount[i]], copy_lines, time_columns)
        return card, body[0]

    # -- scenarios --------------------------------------------------------------------------
    # Each returns [(event_time, row)] and reserves its card until a real owner could be back.

    def _pick_card(self, t: float, *, with_history: bool = False) -> int | None:
        for _ in range(64):
            card = self.r.randrange(self.world.n_cards)
            if self.busy_until.get(card, -math.inf) > t:
                continue
            if with_history and not self.seen[card]:
                continue
            return card
        return None

    def _new_device(self) -> str:
        return f"dev-{self.r.getrandbits(40):010x}"

    def _far_city(self, city: int, *, min_km: float, max_km: float) -> tuple[int, float]:
        w = self.world
        n = len(w.city_lat)
        for _ in range(200):
            other = self.r.randrange(n)
            d = haversine_km(w.city_lat[city], w.city_lon[city], w.city_lat[other], w.city_lon[other])
            if min_km <= d <= max_km:
                return other, d
        raise RuntimeError("no city at the wanted distance")  # pragma: no cover - data has plenty

    def _city_purchase(self, t: float, card: int, city: int, **labels) -> tuple:
        w = self.world
        m = city * MERCHANTS_PER_CITY + self.r.randrange(MERCHANTS_PER_CITY - 1)
        cat = w.merchant_cat[m]
        amount = min(900.0, self._legit_amount(cat, card, self.r.gauss(0, 1)))
        return self._row(
            t, card, w.merchant_id[m], cat, amount, "pos", w.city_country[city],
            w.merchant_lat[m], w.merchant_lon[m], **labels,
        )

    def _ecom(self, t: float, card: int, e: int, amount: float, **labels) -> tuple:
        w = self.world
        return self._row(
            t, card, w.ecom_id[e], w.ecom_cat[e], amount, "ecom", w.ecom_country[e], None, None,
            **labels,
        )

    def scenario_high_value(self, t: float, card: int) -> list[tuple[float, tuple]]:
        """One purchase above 2,000 (2,100–9,500), near home or online, on the card's own device."""
        w = self.world
        amount = self.r.uniform(2100.0, 9500.0)
        labels = {"is_fraud": True, "pattern": "high_value"}
        if self.r.random() < 0.5:
            city = int(w.card_city[card])
            m = city * MERCHANTS_PER_CITY + self.r.randrange(MERCHANTS_PER_CITY - 1)
            row = self._row(
                t, card, w.merchant_id[m], "electronics", amount, "pos", w.city_country[city],
                w.merchant_lat[m], w.merchant_lon[m], **labels,
            )
        else:
            e = self.r.randrange(ECOM_MERCHANTS)
            row = self._row(
                t, card, w.ecom_id[e], "electronics", amount, "ecom",
                w.city_country[int(w.card_city[card])], None, None, **labels,
            )
        self.busy_until[card] = t + 600
        return [(t, row)]

    def scenario_card_testing(self, t: float, card: int) -> list[tuple[float, tuple]]:
        """6–12 amounts of 0.50–4.99 at one online merchant, 4–20 s apart, from a new device."""
        w = self.world
        home_cc = w.city_country[int(w.card_city[card])]
        e = self.r.choice(w.ecom_by_country.get(home_cc) or w.ecom_by_country["US"])
        device = self._new_device()
        out = []
        for _ in range(self.r.randint(6, 12)):
            amount = self.r.uniform(0.5, 4.99)
            out.append((t, self._ecom(t, card, e, amount, device=device, is_fraud=True, pattern="card_testing")))
            t += self.r.uniform(4.0, 20.0)
        self.busy_until[card] = t + 600
        return out

    def scenario_velocity(self, t: float, card: int) -> list[tuple[float, tuple]]:
        """5–8 purchases at different local merchants, 3–12 s apart: ≥ 4 within 60 s."""
        w = self.world
        city = int(w.card_city[card])
        picks = self.r.sample(range(MERCHANTS_PER_CITY - 1), k=MERCHANTS_PER_CITY - 1)
        out = []
        for k in range(self.r.randint(5, 8)):
            m = city * MERCHANTS_PER_CITY + picks[k % len(picks)]
            amount = self.r.uniform(20.0, 400.0)
            out.append((t, self._row(
                t, card, w.merchant_id[m], w.merchant_cat[m], amount, "pos", w.city_country[city],
                w.merchant_lat[m], w.merchant_lon[m], is_fraud=True, pattern="velocity",
            )))
            t += self.r.uniform(3.0, 12.0)
        self.busy_until[card] = t + 600
        return out

    def scenario_impossible_travel(self, t: float, card: int) -> list[tuple[float, tuple]]:
        """The owner buys at home; 5–60 min later the card is used ≥ 1,500 km away (> 1,500 km/h)."""
        w = self.world
        home = int(w.card_city[card])
        far, d = self._far_city(home, min_km=1500.0, max_km=15000.0)
        first = self._local_purchase(t, card)
        dt = self.r.uniform(300.0, min(3600.0, d / 1500.0 * 3600.0))
        second = self._city_purchase(t + dt, card, far, is_fraud=True, pattern="impossible_travel")
        self.busy_until[card] = t + dt + d / 800.0 * 3600.0
        return [(t, first), (t + dt, second)]

    def scenario_account_takeover(self, t: float, card: int) -> list[tuple[float, tuple]]:
        """A card with history used online from a never-seen device for 600–1,900, 1–3 times."""
        w = self.world
        device = self._new_device()
        home_cc = w.city_country[int(w.card_city[card])]
        pool = w.ecom_by_country.get(home_cc) or list(range(ECOM_MERCHANTS))
        out = []
        for _ in range(self.r.randint(1, 3)):
            e = self.r.choice(pool)
            amount = self.r.uniform(600.0, 1900.0)
            out.append((t, self._row(
                t, card, w.ecom_id[e], "electronics", amount, "ecom", home_cc, None, None,
                device=device, is_fraud=True, pattern="account_takeover",
            )))
            t += self.r.uniform(120.0, 900.0)
        self.busy_until[card] = t + 600
        return out

    def scenario_cross_border(self, t: float, card: int) -> list[tuple[float, tuple]]:
        """3–5 online purchases, each in a different foreign country, 70–360 s apart."""
        w = self.world
        home_cc = w.city_country[int(w.card_city[card])]
        foreign = [cc for cc in w.ecom_countries if cc != home_cc]
        out = []
        for cc in self.r.sample(foreign, k=self.r.randint(3, 5)):
            e = self.r.choice(w.ecom_by_country[cc])
            amount = self.r.uniform(30.0, 600.0)
            out.append((t, self._ecom(t, card, e, amount, is_fraud=True, pattern="cross_border")))
            t += self.r.uniform(70.0, 360.0)
        self.busy_until[card] = t + 600
        return out

    def scenario_amount_spike(self, t: float, card: int) -> list[tuple[float, tuple]]:
        """Ten small local purchases (8.00–40.00, 2–10 min apart: never 4 within 60 s), then one at a
        local merchant of 12–18× their average, at least 200 and at most 1,900 (under high_value's
        2,000): the previous ten transactions of the spike are exactly those ten."""
        w = self.world
        city = int(w.card_city[card])
        out = []
        total = Decimal(0)
        for _ in range(AMOUNT_SPIKE_HISTORY):
            m = city * MERCHANTS_PER_CITY + self.r.randrange(MERCHANTS_PER_CITY - 1)
            row = self._row(t, card, w.merchant_id[m], w.merchant_cat[m], self.r.uniform(8.0, 40.0), "pos",
                            w.city_country[city], w.merchant_lat[m], w.merchant_lon[m])
            total += row[INDEX["amount"]]  # the amount as sent (two decimals)
            out.append((t, row))
            t += self.r.uniform(120.0, 600.0)
        average = float(total) / AMOUNT_SPIKE_HISTORY
        amount = math.ceil(min(1900.0, max(200.0, average * self.r.uniform(12.0, 18.0))) * 100) / 100
        m = city * MERCHANTS_PER_CITY + self.r.randrange(MERCHANTS_PER_CITY - 1)
        out.append((t, self._row(t, card, w.merchant_id[m], "electronics", amount, "pos", w.city_country[city],
                                 w.merchant_lat[m], w.merchant_lon[m], is_fraud=True, pattern="amount_spike")))
        self.busy_until[card] = t + 600
        return out

    def scenario_legit_flight(self, t: float, card: int) -> list[tuple[float, tuple]]:
        """The owner buys at home, flies 500–9,000 km at ≤ 700 km/h, and buys at the destination."""
        w = self.world
        home = int(w.card_city[card])
        far, d = self._far_city(home, min_km=500.0, max_km=9000.0)
        labels = {"is_fraud": False, "pattern": "legit_flight"}
        out = [(t, self._local_purchase(t, card, **labels))]
        t += d / self.r.uniform(350.0, 700.0) * 3600.0 + 1800.0
        for _ in range(self.r.randint(1, 2)):
            out.append((t, self._city_purchase(t, card, far, **labels)))
            t += self.r.uniform(1800.0, 3 * 3600.0)
        self.busy_until[card] = t + d / 600.0 * 3600.0
        return out

    def scenario_legit_busy_shopper(self, t: float, card: int) -> list[tuple[float, tuple]]:
        """4–7 local purchases 22–90 s apart: busy, but never 4 within 60 s."""
        labels = {"is_fraud": False, "pattern": "legit_busy_shopper"}
        out = []
        for _ in range(self.r.randint(4, 7)):
            out.append((t, self._local_purchase(t, card, **labels)))
            t += self.r.uniform(22.0, 90.0)
        self.busy_until[card] = t + 600
        return out

    def _episode_due(self, u: float, t: float) -> bool:
        """Start the episode that the draw u (< p_episode) selects; True if a row of it is due at t."""
        k = 0
        while self.scenario_cum[k] < u:
            k += 1
        return self._episode(self.scenario_names[k], t) and self.heap[0][0] <= t

    def _episode(self, name: str, t: float) -> bool:
        card = self._pick_card(t, with_history=name == "account_takeover")
        if card is None:
            return False
        events = getattr(self, f"scenario_{name}")(card=card, t=t)
        cfg = self.config
        for when, row in events:
            key = when
            if cfg.late_share and self.r.random() < cfg.late_share:
                key = when + self.r.uniform(0.0, cfg.max_delay_s)
            heapq.heappush(self.heap, (key, self.seq_key(), row))
        self.seen[card] = True
        return True

    def seq_key(self) -> int:
        self._heap_seq += 1
        return self._heap_seq

    # -- the stream -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple]:
        for rows in self.batches():
            yield from rows

    def batches(self, *, copy_lines: bool = False) -> Iterator[list[tuple | str]]:
        """The stream in lists of up to CHUNK rows, for `Writer.write_many`.

        With `copy_lines`, normal purchases come as their COPY text line (what
        `loader.writer.format_copy_text` makes of the row tuple, tested), which costs about a
        third of making the tuple; the writer rebuilds a tuple from a line in the rare cases
        it needs one. Episode rows are tuples either way.
        """
        cfg = self.config
        remaining = cfg.count
        paced = cfg.paced
        step = 1.0 / cfg.rate if paced else 0.0
        late = cfg.late_share
        max_delay = cfg.max_delay_s
        heap = self.heap
        heappop, heappush = heapq.heappop, heapq.heappush
        p_ep = self.p_episode
        busy_until = self.busy_until
        used = self._used
        txn_format = self.txn_format
        fromtimestamp = datetime.fromtimestamp
        utc = _UTC
        while remaining is None or remaining > 0:
            self._refill(copy_lines)
            # per chunk row: card, body (`_bodies`: all after the txn_id, but for the event time
            # and what follows it when paced), event time when unpaced
            cards, bodies, times = self._card, self._body, self._times
            u_ep, u_late = self._u_ep, self._u_late
            rows: list[tuple | str] = []
            for i in range(CHUNK):
                if paced:
                    t = self.clock + step  # ticks per delivered row, so pacing by count matches
                else:
                    t = times[i]
                self.clock = t
                if (heap and heap[0][0] <= t) or (u_ep[i] < p_ep and self._episode_due(u_ep[i], t)):
                    # an episode's row is due: delivered instead of this draw's purchase
                    rows.append(heappop(heap)[2])
                else:
                    # a normal purchase, the common case
                    card = cards[i]
                    body = bodies[i]
                    if card in busy_until and busy_until[card] > t:
                        card, body = self._other_card(t, i, copy_lines)
                    used.append(card)
                    self.seq += 1
                    txn = txn_format % self.seq
                    if not paced:
                        row = txn + body if copy_lines else (txn,) + body
                    elif copy_lines:
                        row = f"{txn}{body}{timestamp_text(fromtimestamp(t, utc))}{NORMAL_TAIL}"
                    else:
                        row = (txn, *body, fromtimestamp(t, utc), False, None)
                    if late and u_late[i] < late:
                        heappush(heap, (t + self.r.random() * max_delay, self.seq_key(), row))
                        if paced:
                            self.clock -= step  # pacing counts delivered rows, not drawn ones
                        continue
                    rows.append(row)
                if len(rows) == remaining:
                    break
            if rows:
                yield rows
            if remaining is not None:
                remaining -= len(rows)


def generate(config: GeneratorConfig, *, wall_start: float | None = None) -> Iterator[tuple]:
    """Rows in `loader.schema.COLUMNS` order; the same config (seed) gives the same stream."""
    return iter(Generator(config, wall_start=wall_start))


def generate_batches(config: GeneratorConfig, *, wall_start: float | None = None) -> Iterator[list[tuple | str]]:
    """The rows of `generate` in lists for `Writer.write_many`, normal purchases as their COPY
    text line: what the loader sends, with no per-row step between generator and writer."""
    return Generator(config, wall_start=wall_start).batches(copy_lines=True)

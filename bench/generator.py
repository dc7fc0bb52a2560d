"""A deterministic fund-platform population: profiles with the recipe's attributes and ~2 years of skewed events.

Pure and seeded: the same (seed, scale, anchor) gives the same rows on every machine and in any
block order, because every block of profiles draws from its own generator derived from the seed.
No I/O here; bench.dataset turns the rows into database rows.
"""

import bisect
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

FULL_PROFILES = 1_000_000
FULL_EVENTS = 10_000_000
BLOCK = 10_000
# Events span the last ~2 years, inside the service's default 730-day retention.
HISTORY_DAYS = 700
# Activity is power-law: the Pareto shape of the 80/20 rule; one person never exceeds the cap.
ACTIVITY_SHAPE = 1.16
ACTIVITY_CAP = 5_000
CURRENCY = "INR"

AMCS = (
    "sbi", "icici_pru", "hdfc", "nippon", "kotak", "aditya_birla", "axis", "uti", "mirae", "dsp",
    "tata", "franklin", "idfc", "edelweiss", "canara_robeco", "invesco", "hsbc", "motilal", "ppfas", "quant",
    "sundaram", "lic", "baroda_bnp", "pgim", "union", "mahindra", "navi", "whiteoak", "bandhan", "jm",
    "quantum", "iti", "trust", "samco", "groww", "boi", "shriram", "taurus", "nj", "helios",
)  # fmt: skip
CATEGORIES = ("Equity", "Debt", "Hybrid", "ELSS", "Index", "Sectoral", "Thematic", "International", "Liquid", "Gold")
CATEGORY_WEIGHTS = (10.0, 3.5, 3.0, 3.0, 2.5, 1.5, 1.0, 0.8, 1.2, 0.8)
CATEGORY_COUNT_WEIGHTS = (0.38, 0.30, 0.17, 0.09, 0.04, 0.02)
AGE_GROUPS = ("18-25", "26-35", "36-45", "46-60", "60+")
AGE_WEIGHTS = (0.15, 0.35, 0.27, 0.17, 0.06)
SIP_AMOUNTS_INR = (500, 1000, 1500, 2000, 2500, 3000, 5000, 10000, 25000)
SIP_AMOUNT_WEIGHTS = (10, 22, 6, 14, 8, 9, 18, 9, 4)
CALCULATORS = ("sip", "swp", "stp", "lumpsum", "elss", "goal")
PLATFORMS = ("android", "ios", "web")
PLATFORM_WEIGHTS = (0.62, 0.18, 0.20)

EVENT_NAMES = (
    "session_start", "calculator_used", "fund_screener_used", "watchlist_add", "transaction_success",
    "sip_registered", "lumpsum_invested", "switch_executed", "redemption_completed", "email_opened", "push_clicked",
)  # fmt: skip
_BASE_MIX = (40.0, 7.0, 5.0, 4.0, 14.0, 3.0, 4.0, 1.5, 2.5, 6.0, 3.0)
# SIP investors register SIPs and rarely buy lumpsum; lumpsum investors the other way round.
_MIX_BY_TYPE = {
    "SIP": {"sip_registered": 6.0, "lumpsum_invested": 0.25},
    "Lumpsum": {"sip_registered": 0.25, "lumpsum_invested": 8.0},
    "Both": {"sip_registered": 4.0, "lumpsum_invested": 4.0},
}


def _cumulative(weights: Sequence[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def _mix(investment_type: str) -> list[float]:
    overrides = _MIX_BY_TYPE[investment_type]
    return _cumulative([overrides.get(name, base) for name, base in zip(EVENT_NAMES, _BASE_MIX, strict=True)])


_AMC_CUM = _cumulative([1.0 / (rank + 1) ** 0.9 for rank in range(len(AMCS))])
_CATEGORY_COUNT_CUM = _cumulative(CATEGORY_COUNT_WEIGHTS)
_AGE_CUM = _cumulative(AGE_WEIGHTS)
_SIP_CUM = _cumulative(SIP_AMOUNT_WEIGHTS)
_PLATFORM_CUM = _cumulative(PLATFORM_WEIGHTS)
_MIX_CUM = {kind: _mix(kind) for kind in _MIX_BY_TYPE}


def _pick(rng: random.Random, items: Sequence[str], cumulative: Sequence[float]) -> str:
    return items[bisect.bisect(cumulative, rng.random() * cumulative[-1])]


@dataclass(frozen=True)
class Spec:
    """What to generate: `scale` 1.0 is 1M profiles and 10M events; `anchor` is the newest event time."""

    scale: float
    seed: int
    anchor: datetime

    @property
    def profile_count(self) -> int:
        return max(1, round(FULL_PROFILES * self.scale))

    @property
    def event_count(self) -> int:
        return max(1, round(FULL_EVENTS * self.scale))

    @property
    def blocks(self) -> int:
        return math.ceil(self.profile_count / BLOCK)

    @property
    def key(self) -> str:
        """The cache key: scale and seed (the anchor is recorded in the cache's manifest)."""
        return f"scale{self.scale:g}-seed{self.seed}"


def default_anchor(now: datetime) -> datetime:
    """Midnight UTC of `now`'s day, so every run on one day generates the same data."""
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


def profile_id(index: int) -> str:
    return f"p{index:08d}"


# Attribute rows mirror services.segments.store.profile_attributes: (profile_id, name, value_type, text, number).
AttributeRow = tuple[str, str, str, str | None, float | None]
# Event rows: (event_id, profile_id, name, epoch seconds, properties as the store's JSON text).
EventRow = tuple[str, str, str, int, str]


@dataclass(frozen=True)
class Block:
    """The rows of one block of consecutive profiles."""

    index: int
    profile_ids: list[str]
    attributes: list[AttributeRow]
    events: list[EventRow]


def event_counts(spec: Spec) -> list[int]:
    """Events per profile: Pareto activity, apportioned so the total is exactly spec.event_count."""
    rng = random.Random(f"{spec.seed}/activity")
    weights = [min(rng.paretovariate(ACTIVITY_SHAPE), ACTIVITY_CAP) for _ in range(spec.profile_count)]
    total_weight = sum(weights)
    target = spec.event_count
    shares = [w * target / total_weight for w in weights]
    counts = [min(int(s), ACTIVITY_CAP) for s in shares]
    missing = target - sum(counts)
    # Largest remainders first; ties broken by index, so the result is deterministic.
    order = sorted(range(len(shares)), key=lambda i: (counts[i] - shares[i], i))
    for i in itertools.islice(itertools.cycle(order), max(0, missing)):
        counts[i] += 1
    return counts


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _profile_attributes(rng: random.Random, pid: str) -> tuple[str, list[AttributeRow]]:
    """The recipe's attributes for one person; returns the investment type (it shapes the events) and the rows."""
    u = rng.random()
    investment_type = "SIP" if u < 0.55 else "Lumpsum" if u < 0.80 else "Both"
    wanted = bisect.bisect(_CATEGORY_COUNT_CUM, rng.random() * _CATEGORY_COUNT_CUM[-1]) + 1
    categories: list[str] = []
    pool, weights = list(CATEGORIES), list(CATEGORY_WEIGHTS)
    while len(categories) < wanted:
        i = bisect.bisect(_cumulative(weights), rng.random() * sum(weights))
        categories.append(pool.pop(i))
        weights.pop(i)
    schemes = len(categories) + int(rng.expovariate(0.45))
    amcs = 1 + min(schemes - 1, int(rng.expovariate(0.7)))
    aum_inr = math.exp(rng.gauss(math.log(150_000), 1.4))
    tier = "HNI" if aum_inr > 5_000_000 else "Premium" if aum_inr > 1_000_000 else "Standard"
    has_children = rng.random() < 0.38
    rows: list[AttributeRow] = [
        (pid, "investment_type", "string", investment_type, None),
        *((pid, "fund_categories", "string_set", c, None) for c in sorted(categories)),
        (pid, "plan_type", "string", "Regular" if rng.random() < 0.40 else "Direct", None),
        (pid, "option_type", "string", "Dividend" if rng.random() < 0.12 else "Growth", None),
        (pid, "number_of_schemes", "number", None, float(schemes)),
        (pid, "number_of_amcs", "number", None, float(amcs)),
        (pid, "has_minor_folio", "bool", _bool(rng.random() < (0.12 if has_children else 0.01)), None),
        (pid, "has_sip_stepup", "bool", _bool(rng.random() < (0.03 if investment_type == "Lumpsum" else 0.22)), None),
        (pid, "has_stp", "bool", _bool(rng.random() < (0.12 if investment_type == "Lumpsum" else 0.05)), None),
        (pid, "has_swp", "bool", _bool(rng.random() < (0.04 if tier == "Standard" else 0.15)), None),
        (pid, "total_aum", f"money:{CURRENCY}", None, float(round(aum_inr * 100))),
        (pid, "customer_tier", "string", tier, None),
    ]
    # CRM data is incomplete: some people have no age group or household data.
    if rng.random() >= 0.08:
        rows.append((pid, "age_group", "string", _pick(rng, AGE_GROUPS, _AGE_CUM), None))
    if rng.random() >= 0.10:
        rows.append((pid, "has_children", "bool", _bool(has_children), None))
    return investment_type, rows


def _string(name: str, text: str) -> str:
    return f'"{name}":{{"kind":"string","string":"{text}"}}'


def _money(name: str, paise: int) -> str:
    return f'"{name}":{{"kind":"money","money":{paise}.0,"currency":"{CURRENCY}"}}'


def _lognormal_paise(rng: random.Random, median_inr: float, sigma: float) -> int:
    return max(100, round(math.exp(rng.gauss(math.log(median_inr), sigma)) * 100))


def event_properties(rng: random.Random, name: str) -> str:
    """The event's properties as the store's JSON ({property: {"kind": k, k: value}}), compact."""
    if name == "session_start":
        return "{" + _string("platform", _pick(rng, PLATFORMS, _PLATFORM_CUM)) + "}"
    if name in ("transaction_success", "lumpsum_invested", "redemption_completed"):
        median = {"transaction_success": 10_000, "lumpsum_invested": 50_000, "redemption_completed": 40_000}[name]
        amc = _pick(rng, AMCS, _AMC_CUM)
        category = CATEGORIES[bisect.bisect(_CATEGORY_CUM, rng.random() * _CATEGORY_CUM[-1])]
        return (
            "{"
            + ",".join(
                (
                    _string("amc", amc),
                    _money("amount", _lognormal_paise(rng, median, 1.1)),
                    _string("category", category),
                )
            )
            + "}"
        )
    if name == "sip_registered":
        inr = SIP_AMOUNTS_INR[bisect.bisect(_SIP_CUM, rng.random() * _SIP_CUM[-1])]
        return "{" + _string("amc", _pick(rng, AMCS, _AMC_CUM)) + "," + _money("amount", inr * 100) + "}"
    if name == "calculator_used":
        return "{" + _string("calculator", CALCULATORS[int(rng.random() * len(CALCULATORS))]) + "}"
    if name in ("fund_screener_used", "watchlist_add"):
        category = CATEGORIES[bisect.bisect(_CATEGORY_CUM, rng.random() * _CATEGORY_CUM[-1])]
        return "{" + _string("category", category) + "}"
    if name == "switch_executed":
        source = CATEGORIES[int(rng.random() * len(CATEGORIES))]
        target = CATEGORIES[int(rng.random() * len(CATEGORIES))]
        return "{" + _string("from_category", source) + "," + _string("to_category", target) + "}"
    return "{" + _string("campaign_id", f"CSELL-{int(rng.random() * 24):02d}-T{int(rng.random() * 9):02d}") + "}"


_CATEGORY_CUM = _cumulative(CATEGORY_WEIGHTS)


def block(spec: Spec, index: int, counts: Sequence[int]) -> Block:
    """Profiles [index*BLOCK, ...) with their attributes and events; `counts` is event_counts(spec)."""
    rng = random.Random(f"{spec.seed}/block/{index}")
    first, last = index * BLOCK, min((index + 1) * BLOCK, spec.profile_count)
    anchor = int(spec.anchor.timestamp())
    span = HISTORY_DAYS * 86_400
    ids: list[str] = []
    attributes: list[AttributeRow] = []
    events: list[EventRow] = []
    for i in range(first, last):
        pid = profile_id(i)
        ids.append(pid)
        investment_type, rows = _profile_attributes(rng, pid)
        attributes.extend(rows)
        mix = _MIX_CUM[investment_type]
        total = mix[-1]
        # Recent activity is denser than old activity (ages skewed towards 0).
        for j in range(counts[i]):
            name = EVENT_NAMES[bisect.bisect(mix, rng.random() * total)]
            occurred = anchor - int(span * rng.random() ** 1.6) - 1
            events.append((f"e{i:08d}-{j:04d}", pid, name, occurred, event_properties(rng, name)))
    return Block(index, ids, attributes, events)


def blocks(spec: Spec) -> Iterator[Block]:
    counts = event_counts(spec)
    for index in range(spec.blocks):
        yield block(spec, index, counts)


def anchor_datetime(epoch: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=epoch)

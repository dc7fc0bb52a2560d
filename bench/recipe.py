"""The recipe's 15 segments plus its engagement and high-value filters: the proto rule and a hand-written SQL floor.

The rules come from examples/segments/*.yaml (services.segments.rule_files) when those files exist,
matched to a floor by file name; otherwise from the definitions below, written from the recipe's
table. Each floor is the query an engineer would write by hand against the same tables: the
compiled rule must select exactly the same people (the bench checks the counts agree).
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from google.protobuf.duration_pb2 import Duration

from xsell.segments.v1 import resources_pb2 as r

DAY = 86_400


def _string(text: str) -> r.Value:
    return r.Value(string_value=text)


def _attribute(name: str, op: r.Operator.ValueType, *values: r.Value) -> r.Rule:
    return r.Rule(attribute=r.AttributeCondition(attribute=name, operator=op, values=list(values)))


def _equals(name: str, value: r.Value) -> r.Rule:
    return _attribute(name, r.OPERATOR_EQUALS, value)


def _event(name: str, performed: bool, days: int, at_least: int = 0) -> r.Rule:
    condition = r.EventCondition(
        event_name=name,
        performance=r.PERFORMANCE_PERFORMED if performed else r.PERFORMANCE_NOT_PERFORMED,
        window=r.TimeWindow(last=Duration(seconds=days * DAY)),
    )
    if at_least:
        condition.count.CopyFrom(r.CountComparison(operator=r.OPERATOR_GREATER_OR_EQUAL, value=at_least))
    return r.Rule(event=condition)


def _all(*rules: r.Rule) -> r.Rule:
    return r.Rule(all=r.RuleGroup(rules=list(rules)))


def _set(*members: str) -> r.Value:
    return r.Value(string_set_value=r.StringSet(values=list(members)))


# --- hand-written floors ----------------------------------------------------------------------
# Plain SQL that runs on SQLite and PostgreSQL; :since_<n> binds now - n days.


def _attribute_floor(name: str, predicate: str) -> str:
    return f"SELECT profile_id FROM profile_attributes WHERE name = '{name}' AND {predicate}"


def _two_attributes_floor(first: tuple[str, str], second: tuple[str, str]) -> str:
    return (
        "SELECT a.profile_id FROM profile_attributes a JOIN profile_attributes b "
        f"ON b.profile_id = a.profile_id AND b.name = '{second[0]}' AND b.{second[1]} "
        f"WHERE a.name = '{first[0]}' AND a.{first[1]}"
    )


def _set_lacks_floor(*members: str) -> str:
    listed = ", ".join(f"'{m}'" for m in members)
    return (
        "SELECT p.profile_id FROM profiles p WHERE NOT EXISTS (SELECT 1 FROM profile_attributes a "
        f"WHERE a.profile_id = p.profile_id AND a.name = 'fund_categories' AND a.text_value IN ({listed}))"
    )


def _set_only_floor(member: str) -> str:
    return (
        "SELECT a.profile_id FROM profile_attributes a WHERE a.name = 'fund_categories' "
        f"AND a.text_value = '{member}' AND NOT EXISTS (SELECT 1 FROM profile_attributes b "
        "WHERE b.profile_id = a.profile_id AND b.name = 'fund_categories' "
        f"AND (b.text_value IS NULL OR b.text_value <> '{member}'))"
    )


def _only_event_floor(performed: str, absent: str, days: int) -> str:
    return (
        f"SELECT profile_id FROM events WHERE name = '{performed}' AND occurred_at >= :since_{days} "
        f"EXCEPT SELECT profile_id FROM events WHERE name = '{absent}' AND occurred_at >= :since_{days}"
    )


def _count_floor(name: str, days: int, at_least: int) -> str:
    return (
        f"SELECT profile_id FROM events WHERE name = '{name}' AND occurred_at >= :since_{days} "
        f"GROUP BY profile_id HAVING count(*) >= {at_least}"
    )


@dataclass(frozen=True)
class RecipeSegment:
    """One recipe segment: a stable key, its name, the rule, and the hand-written SQL of the same audience."""

    key: str
    display_name: str
    rule: r.Rule
    floor_sql: str | None
    source: str = "bench/recipe.py"

    def floor_parameters(self, now: datetime) -> dict[str, datetime]:
        return {
            f"since_{days}": now - timedelta(days=days)
            for days in (30, 90, 365)
            if f":since_{days}" in (self.floor_sql or "")
        }


BUILTIN: tuple[RecipeSegment, ...] = (
    RecipeSegment(
        "sip_only_investors",
        "SIP-Only Investors",
        _all(_event("sip_registered", True, 365), _event("lumpsum_invested", False, 365)),
        _only_event_floor("sip_registered", "lumpsum_invested", 365),
    ),
    RecipeSegment(
        "lumpsum_only_investors",
        "Lumpsum-Only Investors",
        _all(_event("lumpsum_invested", True, 365), _event("sip_registered", False, 365)),
        _only_event_floor("lumpsum_invested", "sip_registered", 365),
    ),
    RecipeSegment(
        "equity_only_investors",
        "Equity-Only Investors",
        _equals("fund_categories", _set("Equity")),
        _set_only_floor("Equity"),
    ),
    RecipeSegment(
        "debt_only_investors", "Debt-Only Investors", _equals("fund_categories", _set("Debt")), _set_only_floor("Debt")
    ),
    RecipeSegment(
        "single_scheme_investors",
        "Single-Scheme Investors",
        _equals("number_of_schemes", r.Value(number_value=1)),
        _attribute_floor("number_of_schemes", "num_value = 1"),
    ),
    RecipeSegment(
        "single_amc_investors",
        "Single-AMC Investors",
        _equals("number_of_amcs", r.Value(number_value=1)),
        _attribute_floor("number_of_amcs", "num_value = 1"),
    ),
    RecipeSegment(
        "no_elss_investors",
        "No-ELSS Investors",
        _attribute("fund_categories", r.OPERATOR_NOT_CONTAINS, _string("ELSS")),
        _set_lacks_floor("ELSS"),
    ),
    RecipeSegment(
        "no_international_exposure",
        "No-International Exposure",
        _attribute("fund_categories", r.OPERATOR_NOT_CONTAINS, _string("International")),
        _set_lacks_floor("International"),
    ),
    RecipeSegment(
        "no_sectoral_thematic",
        "No-Sectoral/Thematic",
        _all(
            _attribute("fund_categories", r.OPERATOR_NOT_CONTAINS, _string("Sectoral")),
            _attribute("fund_categories", r.OPERATOR_NOT_CONTAINS, _string("Thematic")),
        ),
        _set_lacks_floor("Sectoral", "Thematic"),
    ),
    RecipeSegment(
        "no_stp_investors",
        "No-STP Investors",
        _all(_equals("has_stp", r.Value(bool_value=False)), _equals("investment_type", _string("Lumpsum"))),
        _two_attributes_floor(("investment_type", "text_value = 'Lumpsum'"), ("has_stp", "text_value = 'false'")),
    ),
    RecipeSegment(
        "no_swp_investors",
        "No-SWP Investors",
        _all(
            _equals("has_swp", r.Value(bool_value=False)),
            _attribute("customer_tier", r.OPERATOR_IN, _string("Premium"), _string("HNI")),
        ),
        _two_attributes_floor(
            ("customer_tier", "text_value IN ('Premium', 'HNI')"), ("has_swp", "text_value = 'false'")
        ),
    ),
    RecipeSegment(
        "no_minor_folio",
        "No-Minor-Folio",
        _all(_equals("has_children", r.Value(bool_value=True)), _equals("has_minor_folio", r.Value(bool_value=False))),
        _two_attributes_floor(("has_children", "text_value = 'true'"), ("has_minor_folio", "text_value = 'false'")),
    ),
    RecipeSegment(
        "regular_plan_only",
        "Regular-Plan-Only",
        _equals("plan_type", _string("Regular")),
        _attribute_floor("plan_type", "text_value = 'Regular'"),
    ),
    RecipeSegment(
        "sip_no_stepup",
        "SIP-No-StepUp",
        _all(_equals("investment_type", _string("SIP")), _equals("has_sip_stepup", r.Value(bool_value=False))),
        _two_attributes_floor(("investment_type", "text_value = 'SIP'"), ("has_sip_stepup", "text_value = 'false'")),
    ),
    RecipeSegment(
        "dividend_payout_only",
        "Dividend-Payout Only",
        _equals("option_type", _string("Dividend")),
        _attribute_floor("option_type", "text_value = 'Dividend'"),
    ),
    RecipeSegment(
        "engagement_filter",
        "Engaged (session_start >= 3 in 30 days)",
        _event("session_start", True, 30, at_least=3),
        _count_floor("session_start", 30, 3),
    ),
    RecipeSegment(
        "high_value_filter",
        "High value (transaction_success >= 10 in 90 days)",
        _event("transaction_success", True, 90, at_least=10),
        _count_floor("transaction_success", 90, 10),
    ),
)
FLOORS = {segment.key: segment.floor_sql for segment in BUILTIN}


def _normalise(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


# File stems the rule files may use for a segment, beyond its key (normalised: letters and digits only).
ALIASES = {
    "sip_only_investors": ("siponly",),
    "lumpsum_only_investors": ("lumpsumonly",),
    "equity_only_investors": ("equityonly",),
    "debt_only_investors": ("debtonly",),
    "single_scheme_investors": ("singlescheme",),
    "single_amc_investors": ("singleamc",),
    "no_elss_investors": ("noelss",),
    "no_international_exposure": ("nointernational",),
    "no_sectoral_thematic": ("nosectoral", "nosectoralthematic"),
    "no_stp_investors": ("nostp",),
    "no_swp_investors": ("noswp",),
    "no_minor_folio": ("nominorfolio", "nominor"),
    "regular_plan_only": ("regularplan", "regularplanonly", "regularonly"),
    "sip_no_stepup": ("sipnostepup", "nostepup"),
    "dividend_payout_only": ("dividendpayout", "dividendonly", "dividend"),
    "engagement_filter": ("engagement", "engaged", "engagementfilter"),
    "high_value_filter": ("highvalue", "highvaluefilter"),
}


def match_key(stem: str) -> str | None:
    """The builtin key a rule file's stem stands for (e.g. '01_sip_only_investors' -> sip_only_investors)."""
    normalised = _normalise(stem.lstrip("0123456789_-"))
    for key, aliases in ALIASES.items():
        candidates = (_normalise(key), *aliases)
        if any(normalised == c or normalised.startswith(c) for c in candidates):
            return key
    return None


def load(examples: Path) -> tuple[list[RecipeSegment], str]:
    """The recipe segments and where they came from: the rule files when they exist, else the builtin ones."""
    files = sorted(examples.glob("*.yaml")) + sorted(examples.glob("*.yml")) + sorted(examples.glob("*.json"))
    reader = _rule_file_reader()
    if not files or reader is None:
        return list(BUILTIN), "bench/recipe.py (examples/segments not available)"
    loaded: list[RecipeSegment] = []
    others: list[str] = []
    for path in files:
        key = match_key(path.stem)
        if key is None:
            # Other example audiences (the bank playbook's) are not recipe segments: no floor, no fund data.
            others.append(path.name)
            continue
        display_name, rule = reader(path)
        loaded.append(RecipeSegment(key, display_name, rule, FLOORS.get(key), source=str(path)))
    if not loaded:
        return list(BUILTIN), f"bench/recipe.py (no recipe segment among {examples})"
    skipped = f"; not recipe segments, left out: {', '.join(others)}" if others else ""
    return loaded, f"{examples}/*.yaml{skipped}"


def _rule_file_reader() -> Callable[[Path], tuple[str, r.Rule]] | None:
    """(display name, proto rule) of one rule file, through the service's own parser."""
    try:
        from services.segments.rule_files import load_segment_file
    except ImportError:
        return None

    def read(path: Path) -> tuple[str, r.Rule]:
        segment = load_segment_file(path)
        return segment.name, segment.rule

    return read

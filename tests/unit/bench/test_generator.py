"""The bench's generator: deterministic per seed, shaped like the recipe, and stored the way the service stores."""

from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite

from bench import dataset, generator, recipe
from services.segments.rules import parse_rule

ANCHOR = datetime(2026, 1, 15, tzinfo=UTC)
SPEC = generator.Spec(0.002, 7, ANCHOR)


def test_same_seed_same_rows_and_other_seed_other_rows() -> None:
    counts = generator.event_counts(SPEC)
    first = generator.block(SPEC, 0, counts)
    again = generator.block(SPEC, 0, generator.event_counts(SPEC))
    other_spec = generator.Spec(SPEC.scale, SPEC.seed + 1, ANCHOR)
    other = generator.block(other_spec, 0, generator.event_counts(other_spec))
    assert (first.attributes, first.events) == (again.attributes, again.events)
    assert first.events != other.events


def test_event_total_is_exact_and_activity_is_skewed() -> None:
    counts = generator.event_counts(SPEC)
    assert len(counts) == SPEC.profile_count == 2000
    assert sum(counts) == SPEC.event_count == 20000
    ranked = sorted(counts, reverse=True)
    top_fifth = sum(ranked[: len(ranked) // 5])
    assert top_fifth > 0.5 * sum(counts)
    assert max(counts) <= generator.ACTIVITY_CAP


def test_rows_carry_the_recipe_attributes_and_events_within_history() -> None:
    block = generator.block(SPEC, 0, generator.event_counts(SPEC))
    names = Counter(name for _, name, *_ in block.attributes)
    for attribute in ("investment_type", "plan_type", "option_type", "customer_tier", "has_stp", "total_aum"):
        assert names[attribute] == SPEC.profile_count
    assert names["fund_categories"] >= SPEC.profile_count
    event_names = Counter(name for _, _, name, _, _ in block.events)
    assert event_names.most_common(1)[0][0] == "session_start"
    assert set(event_names) <= set(generator.EVENT_NAMES)
    oldest = int(ANCHOR.timestamp()) - generator.HISTORY_DAYS * 86_400
    assert all(oldest <= at < int(ANCHOR.timestamp()) for _, _, _, at, _ in block.events)
    assert len({event_id for event_id, *_ in block.events}) == len(block.events)


def test_sqlite_time_matches_sqlalchemys_storage_format() -> None:
    dialect = sqlite.dialect()
    process = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    for epoch in (0, 1_700_000_000, 1_767_225_599, int(ANCHOR.timestamp()) - 1):
        assert dataset.sqlite_time(epoch) == process(generator.anchor_datetime(epoch))


def test_every_builtin_recipe_rule_is_valid_and_has_a_floor() -> None:
    assert len(recipe.BUILTIN) == 17
    for segment in recipe.BUILTIN:
        parse_rule(segment.rule)
        assert segment.floor_sql
        assert recipe.match_key(segment.key) == segment.key


def test_rule_file_names_match_their_floor() -> None:
    assert recipe.match_key("01_sip_only_investors") == "sip_only_investors"
    assert recipe.match_key("high-value") == "high_value_filter"
    assert recipe.match_key("no_sectoral_thematic") == "no_sectoral_thematic"
    assert recipe.match_key("something_else") is None
    assert recipe.match_key("bank_card_likely_transactors") is None

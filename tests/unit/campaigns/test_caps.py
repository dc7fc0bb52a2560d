"""Frequency caps across campaigns, ranking of competing campaigns and the one-offer-per-day rule."""

from datetime import UTC, datetime, timedelta

from services.campaigns.caps import (
    BEST_OFFER,
    ONE_OFFER_PER_DAY,
    Candidate,
    Contact,
    Rank,
    Rule,
    judge,
    period_window,
    rules_of,
)
from services.campaigns.scheduling import FrequencyCapRule

IST = "Asia/Kolkata"
NOW = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)  # Wednesday 11:30 in Kolkata
LAUNCH = datetime(2026, 11, 1, tzinfo=UTC)


def rank(priority: int = 0, value: int | None = None, launched: datetime = LAUNCH, key: str = "cmp_x") -> Rank:
    return Rank.of(priority, value, launched, key)


def contact(
    cid: str,
    at: datetime = NOW - timedelta(hours=1),
    *,
    channel: str = "EMAIL",
    category: int = 1,
    r: Rank | None = None,
    dispatched: bool = True,
    person: str = "p1",
) -> Contact:
    return Contact(cid, person, channel, category, at, r or rank(key=f"cmp_{cid}"), not dispatched)


def candidate(r: Rank | None = None, channel: str = "EMAIL", category: int = 1) -> Candidate:
    return Candidate("p1", channel, category, r or rank(key="cmp_new"), IST)


def test_rank_orders_priority_then_offer_value_then_earliest_launch_then_key() -> None:
    assert rank(priority=2).outranks(rank(priority=1, value=10**9))
    assert rank(value=500).outranks(rank(value=100))
    assert rank(value=100).outranks(rank(value=None))
    assert rank(launched=LAUNCH).outranks(rank(launched=LAUNCH + timedelta(hours=1)))
    assert rank(key="cmp_a").outranks(rank(key="cmp_b"))
    assert not rank(key="cmp_a").outranks(rank(key="cmp_a"))


def test_day_and_iso_week_are_read_in_the_time_zone() -> None:
    # 20:00 UTC on Wednesday is already Thursday 01:30 in Kolkata.
    late = datetime(2026, 11, 25, 20, 0, tzinfo=UTC)
    start, end = period_window("DAY", late, IST)
    assert (start, end) == (datetime(2026, 11, 25, 18, 30, tzinfo=UTC), datetime(2026, 11, 26, 18, 30, tzinfo=UTC))
    start, end = period_window("WEEK", late, IST)
    assert start == datetime(2026, 11, 22, 18, 30, tzinfo=UTC)  # Monday 23 Nov 00:00 IST
    assert end - start == timedelta(days=7)


def test_caps_count_by_scope_within_the_period() -> None:
    per_channel_day = (Rule.of(FrequencyCapRule("CHANNEL", "DAY", 2)),)
    sms = contact("a", channel="SMS")
    email = contact("b")
    yesterday = contact("c", at=NOW - timedelta(days=1))
    assert judge(candidate(), per_channel_day, [sms, email, yesterday], NOW).allowed
    capped = judge(candidate(), per_channel_day, [sms, email, contact("d")], NOW)
    assert (capped.allowed, capped.reason) == (False, "cap_channel_day")

    per_category_week = (Rule.of(FrequencyCapRule("CATEGORY", "WEEK", 1)),)
    monday = contact("e", at=datetime(2026, 11, 23, 4, 0, tzinfo=UTC), category=2)
    assert judge(candidate(category=1), per_category_week, [monday], NOW).allowed
    verdict = judge(candidate(category=2), per_category_week, [monday], NOW)
    assert (verdict.allowed, verdict.reason) == (False, "cap_category_week")
    last_week = contact("f", at=datetime(2026, 11, 22, 18, 0, tzinfo=UTC), category=2)  # Sunday 23:30 IST
    assert judge(candidate(category=2), per_category_week, [last_week], NOW).allowed

    # Another person's contacts never count.
    assert judge(candidate(), per_channel_day, [contact("g", person="p2"), contact("h", person="p2")], NOW).allowed


def test_a_better_campaign_takes_the_place_of_an_undispatched_outreach_but_never_of_a_sent_one() -> None:
    rules = (ONE_OFFER_PER_DAY,)
    low = rank(priority=0, key="cmp_low")
    high = rank(priority=5, key="cmp_high")
    pending = contact("low-1", r=low, dispatched=False)
    verdict = judge(candidate(high), rules, [pending], NOW)
    assert verdict.allowed and verdict.displaced == (pending,)
    # The same outreach already dispatched: the better campaign is capped instead.
    sent = contact("low-1", r=low, dispatched=True)
    verdict = judge(candidate(high), rules, [sent], NOW)
    assert (verdict.allowed, verdict.reason, verdict.displaced) == (False, BEST_OFFER, ())
    # A worse (or equal) campaign never displaces.
    verdict = judge(candidate(low), rules, [contact("high-1", r=high, dispatched=False)], NOW)
    assert (verdict.allowed, verdict.displaced) == (False, ())


def test_displacement_withdraws_the_lowest_ranked_and_nothing_when_it_cannot_make_room() -> None:
    two_a_day = (Rule.of(FrequencyCapRule("ALL", "DAY", 2)),)
    best = rank(priority=9, key="cmp_best")
    mid = contact("mid", r=rank(priority=3), dispatched=False)
    worst = contact("worst", r=rank(priority=1), dispatched=False)
    verdict = judge(candidate(best), two_a_day, [mid, worst], NOW)
    assert verdict.allowed and verdict.displaced == (worst,)
    # Two rules each needing a withdrawal: the second counts the first's withdrawal as made.
    rules = (*two_a_day, Rule.of(FrequencyCapRule("CHANNEL", "DAY", 2)))
    verdict = judge(candidate(best), rules, [mid, worst], NOW)
    assert verdict.displaced == (worst,)
    # A cap of one with two sent contacts and one pending: no room can be made, nothing is withdrawn.
    one = (Rule.of(FrequencyCapRule("ALL", "DAY", 1)),)
    verdict = judge(candidate(best), one, [contact("sent"), worst], NOW)
    assert (verdict.allowed, verdict.displaced) == (False, ())


def test_rules_are_the_campaigns_caps_then_one_offer_per_day_when_enforced() -> None:
    caps = (FrequencyCapRule("ALL", "WEEK", 3),)
    assert rules_of(caps, one_offer_per_day=False) == (Rule("ALL", "WEEK", 3, "cap_all_week"),)
    assert rules_of(caps, one_offer_per_day=True)[-1] == ONE_OFFER_PER_DAY
    assert rules_of((), one_offer_per_day=False) == ()

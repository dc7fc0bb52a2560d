"""Frequency caps across campaigns, who wins a person when campaigns compete, and one best offer per day."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from services.campaigns.scheduling import FrequencyCapRule

BEST_OFFER = "best_offer"
"""The capped reason of a person who already has a better offer today (the one-offer-per-day rule)."""
OUTRANKED = "outranked"
"""The capped reason of an undispatched outreach withdrawn for a better-ranked campaign's."""
LOOKBACK = timedelta(days=8)
"""Contacts older than this cannot fall in any cap's period (at most one ISO week, in any time zone)."""


@dataclass(frozen=True, order=True)
class Rank:
    """Orders competing campaigns, best first: higher priority, then higher offer value (minor units,
    0 without an amount), then the earlier launch, then the campaign key (so there is never a tie)."""

    neg_priority: int
    neg_offer_value: int
    launched_at: datetime
    campaign_key: str

    @classmethod
    def of(cls, priority: int, offer_value_minor: int | None, launched_at: datetime, campaign_key: str) -> "Rank":
        return cls(-priority, -(offer_value_minor or 0), launched_at, campaign_key)

    def outranks(self, other: "Rank") -> bool:
        return self < other


@dataclass(frozen=True)
class Rule:
    """At most max_outreaches per person per period (DAY / WEEK, in the releasing campaign's time zone)
    within scope (ALL / CHANNEL / CATEGORY); `reason` is what a person it caps is counted under."""

    scope: str
    period: str
    max_outreaches: int
    reason: str

    @classmethod
    def of(cls, cap: FrequencyCapRule) -> "Rule":
        return cls(cap.scope, cap.period, cap.max_outreaches, f"cap_{cap.scope}_{cap.period}".lower())


ONE_OFFER_PER_DAY = Rule("ALL", "DAY", 1, BEST_OFFER)


def rules_of(caps: Iterable[FrequencyCapRule], *, one_offer_per_day: bool) -> tuple[Rule, ...]:
    """The campaign's own caps, then (when the service enforces it) the one-offer-per-day rule."""
    rules = tuple(Rule.of(cap) for cap in caps)
    return (*rules, ONE_OFFER_PER_DAY) if one_offer_per_day else rules


@dataclass(frozen=True)
class Contact:
    """One outreach in the contact ledger: who, on which channel and category, when, by which campaign."""

    campaign_id: str
    profile_id: str
    channel: str
    category: int
    contacted_at: datetime
    rank: Rank
    # Not dispatched yet, so a better-ranked campaign may still take its place.
    displaceable: bool


@dataclass(frozen=True)
class Candidate:
    """The outreach a run is about to create for one person."""

    profile_id: str
    channel: str
    category: int
    rank: Rank
    time_zone: str


@dataclass(frozen=True)
class Verdict:
    """Allowed (possibly by withdrawing outranked undispatched outreaches), or capped with a reason."""

    allowed: bool
    reason: str = ""
    displaced: tuple[Contact, ...] = ()


def period_window(period: str, moment: datetime, time_zone: str) -> tuple[datetime, datetime]:
    """[start, end) of the calendar DAY or ISO WEEK (Monday to Sunday) holding `moment`, read in `time_zone`."""
    zone = ZoneInfo(time_zone)
    day = moment.astimezone(zone).date()
    if period == "WEEK":
        first, length = day - timedelta(days=day.weekday()), 7
    else:
        first, length = day, 1
    start = datetime.combine(first, time(), tzinfo=zone)
    end = datetime.combine(first + timedelta(days=length), time(), tzinfo=zone)
    return start.astimezone(ZoneInfo("UTC")), end.astimezone(ZoneInfo("UTC"))


def _in_scope(rule: Rule, candidate: Candidate, contact: Contact) -> bool:
    if rule.scope == "CHANNEL":
        return contact.channel == candidate.channel
    if rule.scope == "CATEGORY":
        return contact.category == candidate.category
    return True


def judge(candidate: Candidate, rules: Sequence[Rule], contacts: Iterable[Contact], now: datetime) -> Verdict:
    """Whether the candidate may be created now, given the person's contacts in the ledger.

    For each rule in order, the person's contacts in the rule's scope and current period are counted
    (those already withdrawn for this candidate excluded). When one more would exceed the rule's
    maximum, the lowest-ranked undispatched contacts the candidate outranks are withdrawn to make
    room; if there are not enough of them, nothing is withdrawn and the candidate is capped with
    the first rule it breaks. A dispatched outreach is never withdrawn: a message sent is sent.
    """
    mine = [c for c in contacts if c.profile_id == candidate.profile_id]
    displaced: dict[str, Contact] = {}
    for rule in rules:
        start, end = period_window(rule.period, now, candidate.time_zone)
        counted = [
            c
            for c in mine
            if c.campaign_id not in displaced and start <= c.contacted_at < end and _in_scope(rule, candidate, c)
        ]
        excess = len(counted) + 1 - rule.max_outreaches
        if excess <= 0:
            continue
        yielding = sorted(
            (c for c in counted if c.displaceable and candidate.rank.outranks(c.rank)),
            key=lambda c: c.rank,
            reverse=True,
        )
        if len(yielding) < excess:
            return Verdict(False, rule.reason)
        for contact in yielding[:excess]:
            displaced[contact.campaign_id] = contact
    return Verdict(True, displaced=tuple(displaced.values()))

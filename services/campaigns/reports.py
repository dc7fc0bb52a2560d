"""Report counts: one run's funnel and engagement from its stored records, and sums over runs."""

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

from services.campaigns.audience import Exclusion
from services.campaigns.caps import OUTRANKED

ENGAGEMENT = {
    "dispatched_at": "dispatched",
    "sent_at": "sent",
    "delivered_at": "delivered",
    "failed_at": "failed",
    "opened_at": "opened",
    "clicked_at": "clicked",
    "replied_at": "replied",
    "bounced_at": "bounced",
    "complained_at": "complained",
    "opted_out_at": "opted_out",
}


@dataclass
class Counts:
    """The funnel of ReportCounts: audience = held_out + suppressed + not_eligible + capped (own) + render_failed
    + created."""

    audience: int = 0
    held_out: int = 0
    suppressed: int = 0
    not_eligible: int = 0
    capped: int = 0
    released: int = 0
    render_failed: int = 0
    dispatched: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    opened: int = 0
    clicked: int = 0
    replied: int = 0
    bounced: int = 0
    complained: int = 0
    opted_out: int = 0
    suppressed_by_reason: Counter[str] = field(default_factory=Counter)
    capped_by_reason: Counter[str] = field(default_factory=Counter)
    not_eligible_by_reason: Counter[str] = field(default_factory=Counter)
    resent: int = 0
    resends_skipped_by_reason: Counter[str] = field(default_factory=Counter)
    fell_back: int = 0
    fallbacks_skipped_by_reason: Counter[str] = field(default_factory=Counter)

    def __add__(self, other: "Counts") -> "Counts":
        total = Counts()
        for f in fields(self):
            setattr(total, f.name, getattr(self, f.name) + getattr(other, f.name))
        return total


def run_counts(
    outreaches: Mapping[str, int],
    exclusions: Iterable[tuple[str, str, int]],
    render_failed: int,
    follow_up_skips: Iterable[tuple[str, str, int]] = (),
) -> Counts:
    """One run's counts from its outreach aggregates (created, withdrawn, resent, fell_back, one per state), its
    exclusions (kind, reason, people) and the resends and fallbacks of its outreaches decided against (decision
    column, reason, outreaches).

    An outreach withdrawn for a better campaign was created from this run's audience, so it stays in
    the audience, leaves `released` and counts as capped ("outranked"); its own exclusion row is not
    a second audience member.
    """
    counts = Counts(render_failed=render_failed)
    created = outreaches.get("created", 0)
    counts.released = created - outreaches.get("withdrawn", 0)
    counts.resent = outreaches.get("resent", 0)
    counts.fell_back = outreaches.get("fell_back", 0)
    for column, reason, originals in follow_up_skips:
        skipped = counts.resends_skipped_by_reason if column == "resend_state" else counts.fallbacks_skipped_by_reason
        skipped[reason] += originals
    for column, name in ENGAGEMENT.items():
        setattr(counts, name, outreaches.get(column, 0))
    left_out = 0
    for kind, reason, people in exclusions:
        if kind == Exclusion.RENDER_FAILED:
            continue  # counted from the run's render_failed column, already in the audience below
        if kind == Exclusion.SUPPRESSED:
            counts.suppressed += people
            counts.suppressed_by_reason[reason] += people
        elif kind == Exclusion.NOT_ELIGIBLE:
            counts.not_eligible += people
            counts.not_eligible_by_reason[reason] += people
        elif kind == Exclusion.HELD_OUT:
            counts.held_out += people
        elif kind == Exclusion.CAPPED:
            counts.capped += people
            counts.capped_by_reason[reason] += people
        if reason != OUTRANKED:
            left_out += people
    counts.audience = created + left_out + render_failed
    return counts


def total(counts: Iterable[Counts]) -> Counts:
    return sum(counts, Counts())

"""Who of a run's streamed members is left out before caps: suppressed, without a contact, not eligible, held out."""

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from services.campaigns.offers import NotEligible
from services.campaigns.rendering import Offer
from xsell.segments.v1 import resources_pb2 as segment_resources

BASIS_POINTS = 10_000
NO_CONTACT = "no_contact"
"""The suppressed-by-reason key of members the channel has no address for (e.g. no e-mail)."""
HOLDOUT = "holdout"
_REASON_PREFIX = "SUPPRESSION_REASON_"
M = TypeVar("M")


class Exclusion(StrEnum):
    """Why a streamed member got no outreach in a run; stored by name with each left-out person."""

    SUPPRESSED = "suppressed"
    # The offer's eligibility conditions or amount rule leave them out (reason: the attribute, or the amount's).
    NOT_ELIGIBLE = "not_eligible"
    HELD_OUT = "held_out"
    CAPPED = "capped"
    # Admitted, but the content could not be rendered for them (counted by the run's skipped_render; the row
    # is kept so ExplainOutreach can say why).
    RENDER_FAILED = "render_failed"


@dataclass(frozen=True)
class LeftOut:
    """One member left out of a run: the kind of exclusion and its reason (e.g. suppressed / "opt_out")."""

    profile_id: str
    kind: Exclusion
    reason: str


def suppression_reason(reasons: Sequence[int]) -> str | None:
    """The one reason a suppressed person is counted under: the first in the contract's reason order.

    Segments sends the reasons in force on the campaign's channel (OPT_OUT before COMPLAINT...); a
    person with several is counted once, so suppressed_by_reason sums to suppressed.
    """
    if not reasons:
        return None
    first = min(reasons)
    try:
        name = segment_resources.SuppressionReason.Name(first)  # type: ignore[arg-type]
    except ValueError:
        return f"reason_{first}"
    return name.removeprefix(_REASON_PREFIX).lower()


def holdout_bucket(campaign_key: str, profile_id: str) -> int:
    """0..9999 from a hash of the campaign and the person: the same person is in the same bucket in every
    run of the campaign, and independent buckets in different campaigns."""
    digest = hashlib.sha256(f"{campaign_key}\x1f{profile_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BASIS_POINTS


def held_out(campaign_key: str, profile_id: str, basis_points: int) -> bool:
    """True for the holdout_basis_points / 10000 share of people whose bucket falls below it."""
    return basis_points > 0 and holdout_bucket(campaign_key, profile_id) < basis_points


EVERY_CHANNEL = "ALL"
"""The key of global suppressions in a member's suppressions by channel."""


@dataclass(frozen=True)
class Reach:
    """The channel a person gets their outreach on, or why they get none (a suppression reason or no_contact)."""

    channel: str | None
    left_out_reason: str | None = None


def reach(order: Sequence[str], suppressed_on: Mapping[str, Sequence[int]], available: Callable[[str], bool]) -> Reach:
    """The first channel of `order` the person has an address on and no suppression in force on.

    A global suppression stops every channel. A suppression on one channel makes that channel
    unavailable, and the next channel of the order is tried, as for a missing address. When no
    channel is left, the person counts under the first suppression that closed a channel they had
    an address on, or as no_contact when they had no address on any.
    """
    global_reasons = suppressed_on.get(EVERY_CHANNEL)
    if global_reasons:
        return Reach(None, suppression_reason(global_reasons))
    closed: str | None = None
    for channel in order:
        if not available(channel):
            continue
        reasons = suppressed_on.get(channel)
        if reasons:
            closed = closed or suppression_reason(reasons)
            continue
        return Reach(channel)
    return Reach(None, closed or NO_CONTACT)


@dataclass(frozen=True)
class Sifted(Generic[M]):
    """A page split into the members still in play (to be capped and rendered), each with its channel,
    and those left out; `offers`: each member in play's own offer, when the campaign decides it per person."""

    eligible: list[tuple[M, str]]
    left_out: list[LeftOut]
    offers: dict[str, Offer]


def sift(
    members: Iterable[M],
    *,
    profile_id: Callable[[M], str],
    reach_of: Callable[[M], Reach],
    campaign_key: str,
    holdout_basis_points: int,
    offer_of: Callable[[M], Offer | NotEligible] | None = None,
) -> Sifted[M]:
    """Applies, in this order: suppressions (a suppression always wins) and no contact, the offer's
    eligibility (`offer_of`, for a campaign whose offer is decided per person), then the holdout.

    The holdout is drawn from people who could be contacted and offered the product, so the control
    group is comparable to the treated group.
    """
    eligible: list[tuple[M, str]] = []
    left_out: list[LeftOut] = []
    offers: dict[str, Offer] = {}
    for member in members:
        person = profile_id(member)
        reached = reach_of(member)
        if reached.channel is None:
            left_out.append(LeftOut(person, Exclusion.SUPPRESSED, reached.left_out_reason or NO_CONTACT))
            continue
        if offer_of is not None:
            offer = offer_of(member)
            if isinstance(offer, NotEligible):
                left_out.append(LeftOut(person, Exclusion.NOT_ELIGIBLE, offer.reason))
                continue
            offers[person] = offer
        if held_out(campaign_key, person, holdout_basis_points):
            left_out.append(LeftOut(person, Exclusion.HELD_OUT, HOLDOUT))
        else:
            eligible.append((member, reached.channel))
    return Sifted(eligible, left_out, offers)

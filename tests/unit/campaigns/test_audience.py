"""Who of a page is left out before caps: suppression first, then no contact, then the deterministic holdout."""

from services.campaigns.audience import (
    BASIS_POINTS,
    Exclusion,
    LeftOut,
    Reach,
    held_out,
    holdout_bucket,
    reach,
    sift,
    suppression_reason,
)
from xsell.segments.v1 import resources_pb2 as seg


def test_a_person_is_counted_under_the_first_reason_in_contract_order() -> None:
    assert suppression_reason([]) is None
    assert suppression_reason([seg.SUPPRESSION_REASON_DND_REGISTRY]) == "dnd_registry"
    assert suppression_reason([seg.SUPPRESSION_REASON_COMPLAINT, seg.SUPPRESSION_REASON_OPT_OUT]) == "opt_out"
    assert suppression_reason([99]) == "reason_99"


def test_holdout_is_deterministic_per_person_and_campaign() -> None:
    assert holdout_bucket("cmp_a", "p1") == holdout_bucket("cmp_a", "p1")
    people = [f"cust-{i:05d}" for i in range(20_000)]
    # Independent of the campaign: another campaign holds out other people.
    a = {p for p in people if held_out("cmp_a", p, 1000)}
    b = {p for p in people if held_out("cmp_b", p, 1000)}
    assert a != b
    # 10% of 20,000 within a 3-sigma band (sigma ~ 42): the hash spreads people evenly.
    assert 1870 <= len(a) <= 2130, len(a)
    assert not any(held_out("cmp_a", p, 0) for p in people)
    assert all(0 <= holdout_bucket("cmp_a", p) < BASIS_POINTS for p in people[:100])
    # A larger share holds out a superset: raising the holdout never releases someone held out before.
    assert a <= {p for p in people if held_out("cmp_a", p, 2000)}


def test_a_person_is_reached_on_the_first_open_channel_of_the_order() -> None:
    order = ("EMAIL", "SMS", "PUSH")
    everywhere = lambda channel: True  # noqa: E731
    assert reach(order, {}, everywhere) == Reach("EMAIL")
    # A channel suppression closes that channel only; a global one closes all.
    assert reach(order, {"EMAIL": (seg.SUPPRESSION_REASON_COMPLAINT,)}, everywhere) == Reach("SMS")
    assert reach(order, {"ALL": (seg.SUPPRESSION_REASON_OPT_OUT,)}, everywhere) == Reach(None, "opt_out")
    # Closed everywhere: counted under the first channel that was closed.
    closed = {"EMAIL": (seg.SUPPRESSION_REASON_COMPLAINT,), "SMS": (2,), "PUSH": (seg.SUPPRESSION_REASON_DND_REGISTRY,)}
    assert reach(order, closed, everywhere) == Reach(None, "complaint")
    # A suppression on a channel the person has no address on closes nothing that was open.
    only_push = lambda channel: channel == "PUSH"  # noqa: E731
    assert reach(order, {"EMAIL": (seg.SUPPRESSION_REASON_COMPLAINT,)}, only_push) == Reach("PUSH")
    assert reach(order, {"PUSH": (seg.SUPPRESSION_REASON_OPT_OUT,)}, only_push) == Reach(None, "opt_out")
    assert reach(order, {}, lambda channel: False) == Reach(None, "no_contact")


def test_suppression_wins_over_the_holdout_which_is_drawn_from_the_reachable() -> None:
    names = [f"h{i}" for i in range(1000)]
    in_holdout = next(p for p in names if held_out("cmp", p, 5000))
    treated = next(p for p in names if not held_out("cmp", p, 5000))
    # Would be held out too: the suppression is what counts.
    suppressed_held = next(p for p in names if held_out("cmp", p, 5000) and p != in_holdout)
    reaches = {
        suppressed_held: Reach(None, "kyc_incomplete"),
        "b": Reach(None, "no_contact"),
        in_holdout: Reach("EMAIL"),
        treated: Reach("SMS"),
    }
    result = sift(
        list(reaches),
        profile_id=lambda m: m,
        reach_of=lambda m: reaches[m],
        campaign_key="cmp",
        holdout_basis_points=5000,
    )
    assert result.left_out == [
        LeftOut(suppressed_held, Exclusion.SUPPRESSED, "kyc_incomplete"),
        LeftOut("b", Exclusion.SUPPRESSED, "no_contact"),
        LeftOut(in_holdout, Exclusion.HELD_OUT, "holdout"),
    ]
    assert result.eligible == [(treated, "SMS")]

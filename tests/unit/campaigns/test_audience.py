"""Who of a page is left out before caps: suppression first, then no contact, then the deterministic holdout."""

from services.campaigns.audience import (
    BASIS_POINTS,
    Exclusion,
    LeftOut,
    held_out,
    holdout_bucket,
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


def _member(pid: str, reasons: tuple[int, ...] = (), email: bool = True) -> tuple[str, tuple[int, ...], bool]:
    return (pid, reasons, email)


def test_suppression_wins_over_no_contact_and_holdout_is_drawn_from_the_reachable() -> None:
    names = [f"h{i}" for i in range(1000)]
    in_holdout = next(p for p in names if held_out("cmp", p, 5000))
    treated = next(p for p in names if not held_out("cmp", p, 5000))
    # "a" would be held out too, and has no e-mail: the suppression is what counts.
    suppressed_held = next(p for p in names if held_out("cmp", p, 5000) and p != in_holdout)
    members = [
        _member(suppressed_held, (seg.SUPPRESSION_REASON_KYC_INCOMPLETE,), email=False),
        _member("b", email=False),
        _member(in_holdout),
        _member(treated),
    ]
    result = sift(
        members,
        profile_id=lambda m: m[0],
        reasons=lambda m: m[1],
        reachable=lambda m: m[2],
        campaign_key="cmp",
        holdout_basis_points=5000,
    )
    assert result.left_out == [
        LeftOut(suppressed_held, Exclusion.SUPPRESSED, "kyc_incomplete"),
        LeftOut("b", Exclusion.SUPPRESSED, "no_contact"),
        LeftOut(in_holdout, Exclusion.HELD_OUT, "holdout"),
    ]
    assert [m[0] for m in result.eligible] == [treated]

"""A run's counts from its stored records, and sums over runs."""

from services.campaigns.reports import Counts, run_counts, total


def test_a_runs_funnel_adds_up_to_its_audience() -> None:
    counts = run_counts(
        {"created": 10, "withdrawn": 2, "dispatched_at": 8, "opened_at": 3, "bounced_at": 1},
        [
            ("suppressed", "opt_out", 2),
            ("suppressed", "no_contact", 1),
            ("held_out", "holdout", 3),
            ("capped", "cap_all_day", 4),
            # This run's withdrawn outreaches: already in `created`, not a second audience member.
            ("capped", "outranked", 2),
            # Recorded so ExplainOutreach can name the person; counted once, from the run's render_failed.
            ("render_failed", "missing variable city", 1),
        ],
        render_failed=1,
    )
    assert counts.audience == 10 + 2 + 1 + 3 + 4 + 1
    assert counts.audience == (
        counts.released + counts.suppressed + counts.held_out + counts.capped + counts.render_failed
    )
    assert (counts.released, counts.capped, counts.suppressed, counts.held_out) == (8, 6, 3, 3)
    assert counts.capped_by_reason == {"cap_all_day": 4, "outranked": 2}
    assert counts.suppressed_by_reason == {"opt_out": 2, "no_contact": 1}
    assert (counts.dispatched, counts.opened, counts.bounced, counts.clicked) == (8, 3, 1, 0)


def test_totals_sum_every_count_and_reason() -> None:
    a = run_counts({"created": 2}, [("suppressed", "opt_out", 1)], render_failed=0)
    b = run_counts({"created": 1, "sent_at": 1}, [("suppressed", "opt_out", 2), ("suppressed", "complaint", 1)], 1)
    summed = total([a, b])
    assert (summed.audience, summed.released, summed.sent, summed.render_failed) == (8, 3, 1, 1)
    assert summed.suppressed_by_reason == {"opt_out": 3, "complaint": 1}
    assert total([]) == Counts()

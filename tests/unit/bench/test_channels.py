"""The channels bench: the providers' logs against the ledger, nearest-rank percentiles, rates, and its parts."""

import json
import math

import pytest

from bench.channels import consumer_span_starts, nearest_rank, parse_args, per_second, tally


def test_every_published_message_sent_once_is_neither_lost_nor_duplicated() -> None:
    result = tally(["a", "b"], ["a", "b"], {"a": "SENT", "b": "SENT"})
    assert (result.sent, result.duplicates, result.lost, result.unknown) == (2, 0, 0, 0)
    assert result.states == {"SENT": 2}


def test_a_campaign_id_accepted_twice_is_a_duplicate_and_not_counted_as_delivered_once() -> None:
    result = tally(["a", "b"], ["a", "a", "b"], {"a": "SENT", "b": "SENT"})
    assert result.duplicates == 1
    assert result.lost == 1


def test_lost_covers_missing_rows_unsent_rows_and_sent_rows_the_provider_never_took() -> None:
    ledger = {"sent-not-taken": "SENT", "ambiguous": "AMBIGUOUS", "taken": "SENT"}
    result = tally(["missing", "sent-not-taken", "ambiguous", "taken"], ["taken", "ambiguous"], ledger)
    assert result.lost == 3
    assert result.states == {"AMBIGUOUS": 1, "MISSING": 1, "SENT": 2}


def test_earlier_parts_of_the_run_count_only_as_unknown_when_the_ledger_lacks_them() -> None:
    ledger = {"old": "SENT", "new": "SENT"}
    result = tally(["new"], ["old", "old", "new", "stray"], ledger)
    assert result.duplicates == 0
    assert result.unknown == 1


def test_nearest_rank_reports_a_latency_that_happened() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert nearest_rank(samples, 0.50) == 50.0
    assert nearest_rank(samples, 0.99) == 99.0
    assert nearest_rank([7.0, 1.0], 0.99) == 7.0
    assert nearest_rank([3.0], 0.5) == 3.0
    assert math.isnan(nearest_rank([], 0.5))


def test_per_second_is_the_count_over_the_elapsed_time() -> None:
    assert per_second(1000, 10.0, 12.0) == 500.0
    assert per_second(5, 3.0, 3.0) == 0.0


def test_a_requests_handler_start_is_its_first_consumer_span_on_the_benchs_clock() -> None:
    def span(kind: str, campaign_id: str, start_ns: int) -> str:
        return json.dumps({"kind": kind, "start_ns": start_ns, "attributes": {"campaign.id": campaign_id}})

    lines = [
        span("CONSUMER", "a", 12_000_000_000),
        span("CONSUMER", "a", 11_000_000_000),  # a redelivery logged first, started earlier: the first start counts
        span("INTERNAL", "b", 10_000_000_000),  # not the consumer's span
        span("CONSUMER", "other-run", 10_000_000_000),
    ]
    assert consumer_span_starts(lines, {"a", "b"}, wall_minus_perf=1_000.0) == {"a": 11.0 - 1_000.0}


def test_the_receipts_part_needs_the_http_parts_messages() -> None:
    assert parse_args([]).parts == ["http", "receipts", "smtp", "latency", "low"]
    assert parse_args(["--parts", "http,receipts"]).parts == ["http", "receipts"]
    with pytest.raises(SystemExit):
        parse_args(["--parts", "receipts"])

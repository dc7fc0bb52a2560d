"""Flow control rules: token buckets, concurrency, backoff with jitter, quiet hours."""

import asyncio
import random
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from services.channels.flow import Backoff, QuietHours, Throttle, TokenBucket
from services.channels.settings import ChannelsSettings


def test_a_bucket_lets_a_burst_through_then_spaces_tokens_at_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    # Reserved tokens queue in arrival order, 1/rate apart.
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.0) == pytest.approx(0.2)


def test_a_bucket_refills_with_time_but_never_beyond_its_burst() -> None:
    bucket = TokenBucket(rate=2, burst=2, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.take(0.5) == 0.0  # one token came back in half a second
    assert bucket.take(100.0) == 0.0
    assert bucket.take(100.0) == 0.0
    assert bucket.take(100.0) == pytest.approx(0.5)


def test_a_bucket_needs_a_positive_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0.0)


async def test_a_throttle_never_lets_more_than_its_concurrency_in() -> None:
    throttle = Throttle(rate=1e9, burst=1e9, concurrency=2)
    inside = 0
    most = 0
    release = asyncio.Event()

    async def call() -> None:
        nonlocal inside, most
        async with throttle:
            inside += 1
            most = max(most, inside)
            await release.wait()
            inside -= 1

    tasks = [asyncio.create_task(call()) for _ in range(5)]
    # Every task gets as far as it can: two inside, three waiting for a slot.
    for _ in range(20):
        await asyncio.sleep(0)
    assert inside == 2
    release.set()
    await asyncio.gather(*tasks)
    assert most == 2


async def test_a_throttle_waits_for_the_token_it_reserved() -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    throttle = Throttle(rate=4, burst=1, concurrency=10, clock=lambda: 0.0, sleep=fake_sleep)
    for _ in range(3):
        async with throttle:
            pass
    assert slept == [pytest.approx(0.25), pytest.approx(0.5)]


def test_backoff_grows_exponentially_with_jitter_within_half_of_each_step() -> None:
    backoff = Backoff(base_seconds=1.0, cap_seconds=30.0)
    rng = random.Random(7)
    for attempt, step in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 30.0), (20, 30.0)]:
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len({round(d, 6) for d in delays}) > 100  # jittered, not lock-step


def test_quiet_hours_across_midnight_say_when_sending_resumes() -> None:
    quiet = QuietHours.parse("21:00-09:00", "Asia/Kolkata")
    # 16:00 UTC is 21:30 IST: inside, resumes at 09:00 IST the next morning (03:30 UTC).
    assert quiet.resumes_at(datetime(2026, 11, 26, 16, 0, tzinfo=UTC)) == datetime(2026, 11, 27, 3, 30, tzinfo=UTC)
    # 02:00 UTC is 07:30 IST: inside, resumes the same morning.
    assert quiet.resumes_at(datetime(2026, 11, 26, 2, 0, tzinfo=UTC)) == datetime(2026, 11, 26, 3, 30, tzinfo=UTC)
    # 06:00 UTC is 11:30 IST: outside.
    assert quiet.resumes_at(datetime(2026, 11, 26, 6, 0, tzinfo=UTC)) is None
    assert quiet.describe() == "21:00-09:00 Asia/Kolkata"


def test_quiet_hours_within_a_day() -> None:
    quiet = QuietHours.parse("13:00-14:00", "UTC")
    assert quiet.resumes_at(datetime(2026, 1, 1, 13, 30, tzinfo=UTC)) == datetime(2026, 1, 1, 14, 0, tzinfo=UTC)
    assert quiet.resumes_at(datetime(2026, 1, 1, 14, 0, tzinfo=UTC)) is None


@pytest.mark.parametrize("window", ["21:00", "9pm-9am", "10:00-10:00"])
def test_quiet_hours_that_cannot_be_read_are_refused(window: str) -> None:
    with pytest.raises(ValueError):
        QuietHours.parse(window, "Asia/Kolkata")


def test_email_is_held_to_twice_its_smtp_sessions_unless_named() -> None:
    limits = ChannelsSettings(smtp_connections=4).provider_limits
    assert limits["email"] == (None, 8)
    assert limits["sms"] == (100.0, 32)
    named = ChannelsSettings(
        smtp_connections=4, provider_concurrency={"email": 3}, provider_rate_per_second={"email": 50}
    )
    assert named.provider_limits["email"] == (50.0, 3)
    # A rate without a concurrency keeps the default of 16 in flight.
    assert ChannelsSettings(provider_rate_per_second={"fcm": 10}, provider_concurrency={}).provider_limits["fcm"] == (
        10.0,
        16,
    )


def test_email_is_handed_over_again_only_when_every_email_asks_for_its_report() -> None:
    with pytest.raises(ValidationError, match="XSELL_CHANNELS_SMTP_DELIVERY_REPORTS"):
        ChannelsSettings(resend_without_receipt_seconds={"email": 3600})
    with_reports = ChannelsSettings(resend_without_receipt_seconds={"email": 3600}, smtp_delivery_reports=True)
    assert with_reports.resend_without_receipt_seconds == {"email": 3600.0}
    # An ESP's event webhook reports every e-mail too (SendGrid's processed, SES's Send, within seconds).
    for esp in ("sendgrid", "ses"):
        through_esp = ChannelsSettings(resend_without_receipt_seconds={"email": 300}, smtp_esp_events=esp)
        assert through_esp.email_reports and through_esp.resend_without_receipt_seconds == {"email": 300.0}
    with pytest.raises(ValidationError, match="smtp_esp_events"):
        ChannelsSettings(smtp_esp_events="mailgun")
    with pytest.raises(ValidationError, match="smtp_ses_configuration_set"):
        ChannelsSettings(smtp_esp_events="ses", smtp_ses_configuration_set="xsell events")
    with pytest.raises(ValidationError, match="XSELL_CHANNELS_SMTP_ESP_EVENTS is not ses"):
        ChannelsSettings(smtp_esp_events="sendgrid", smtp_ses_configuration_set="xsell-events")


async def test_a_provider_limited_by_concurrency_alone_never_waits_for_tokens() -> None:
    throttle = Throttle.of(None, 2)
    for _ in range(1000):
        async with throttle:
            pass

"""E-mail that reports back, through a real gateway: with smtp_delivery_reports every e-mail asks the relay for its
delivery status notification (RFC 3461), which comes back to the gateway's return-path mailbox; with
smtp_esp_events=sendgrid a relay playing SendGrid's posts its signed Event Webhook to the gateway, and with
smtp_esp_events=ses one playing SES posts its events as signed SNS notifications. Any of them is the message's
receipt: an e-mail whose answer was lost is settled by its report, or handed over again once when none came in its
window."""

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from devstack.esp_sink import SES_TOPIC_ARN, SendGridEventPoster, SesEventPoster
from devstack.smtp_sink import ReportReturner
from gateway.app import build as build_gateway
from gateway.settings import GatewaySettings
from plumbing.bus import Bus
from plumbing.outbox import utcnow
from plumbing.runtime import ServiceProcess
from plumbing.signing import signed_envelope_id
from services.channels.resend import Resender, resend_reason
from services.channels.smtp import xtext
from tests.integration.channels.conftest import TRACKING_SECRET, Channels, Listener, Mailbox, SmtpRelay, StartChannels
from tests.integration.channels.support import (
    dispatch,
    message_if_any,
    new_campaign_id,
    publish,
    published_state,
    updates,
)
from tests.waiting import eventually
from xsell.channels.v1 import resources_pb2

AMBIGUOUS = resources_pb2.DELIVERY_STATE_AMBIGUOUS
DELIVERED = resources_pb2.DELIVERY_STATE_DELIVERED
SENT = resources_pb2.DELIVERY_STATE_SENT
RETURN_PATH = "bounces@mail.test.in"
CONFIGURATION_SET = "xsell-events"


@dataclass
class Reporting:
    """Channels asking for reports, a relay that sends them (DSNs by mail, or SendGrid's or SES's events), and the
    gateway that records them."""

    channels: Channels
    relay: SmtpRelay
    returner: ReportReturner
    gateway: ServiceProcess
    events: SendGridEventPoster | SesEventPoster | None = None

    @property
    def mailbox(self) -> Mailbox:
        return self.relay.mailbox

    def resender(self) -> Resender:
        """The service's own resender, its clock two hours on: every AMBIGUOUS message is past its window."""
        task = next(task for task in self.channels.process.tasks if task.name == "resender")
        resender = task.run.__self__  # type: ignore[attr-defined]
        assert isinstance(resender, Resender)
        resender.clock = lambda: utcnow() + timedelta(hours=2)
        return resender


@pytest.fixture
async def reporting(
    start_channels: StartChannels, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Reporting]:
    """`indirect` param: "dsn" (the default), "dsn-one-command-at-a-time" (a relay without PIPELINING), "sendgrid",
    "ses"."""
    kind = getattr(request, "param", "dsn")
    returner = ReportReturner("127.0.0.1", 0, retry_delays=(0.1, 0.2, 0.5, 1.0))
    events: SendGridEventPoster | SesEventPoster | None = None
    if kind == "sendgrid":
        events = SendGridEventPoster("", retry_delays=(0.1, 0.2, 0.5, 1.0))
    elif kind == "ses":
        events = await SesEventPoster("", retry_delays=(0.1, 0.2, 0.5, 1.0)).start()
    mailbox = (
        Mailbox(events=events) if events else Mailbox(reports=returner, pipelining=kind != "dsn-one-command-at-a-time")
    )
    relay = SmtpRelay(mailbox, port=0)
    await relay.start()
    reports: dict[str, Any] = {"smtp_delivery_reports": True}
    if kind in ("sendgrid", "ses"):
        reports = {"smtp_esp_events": kind}
    if kind == "ses":
        reports["smtp_ses_configuration_set"] = CONFIGURATION_SET
    channels = await start_channels(
        relay.port, return_path=RETURN_PATH, resend_without_receipt_seconds={"email": 3600.0}, **reports
    )
    gateway = await build_gateway(
        GatewaySettings(
            grpc_port=0,
            http_port=0,
            var_dir=tmp_path / "gateway",
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
            channels_target=f"127.0.0.1:{channels.process.server.port}",
            bounce_mailbox_port=0,
            message_id_domain="mail.test.in",
            tracking_secret=TRACKING_SECRET,  # type: ignore[arg-type]  # channels signs each envelope id with it
            sendgrid_verification_key=events.verification_key if isinstance(events, SendGridEventPoster) else "",
            ses_topic_arns=[SES_TOPIC_ARN] if isinstance(events, SesEventPoster) else [],
            sns_cert_url_pattern=events.cert_url_pattern if isinstance(events, SesEventPoster) else ".^",
            log_level="warning",
        ),
        TracerProvider(),
    )
    await gateway.start()
    assert gateway.mailbox is not None  # type: ignore[attr-defined]
    returner.port = gateway.mailbox.port  # type: ignore[attr-defined]
    if events is not None:
        events.url = f"http://127.0.0.1:{gateway.http.port}/webhooks/email/{kind}"  # type: ignore[attr-defined]
    try:
        yield Reporting(channels, relay, returner, gateway, events)
    finally:
        await gateway.stop(0)
        await relay.stop()
        if isinstance(events, SesEventPoster):
            await events.stop()


async def _state(channels: Channels, campaign_id: str, state: int) -> resources_pb2.Message:
    async def reached() -> resources_pb2.Message | None:
        message = await message_if_any(channels, campaign_id)
        if message is None:
            return None
        return message if message.state == state else None

    message = await eventually(reached)
    assert message is not None
    return message


def _delivery_steps(message: resources_pb2.Message) -> list[tuple[str, str]]:
    return [
        (resources_pb2.DeliveryState.Name(entry.delivery_state).removeprefix("DELIVERY_STATE_"), entry.detail)
        for entry in message.timeline
        if entry.WhichOneof("step") == "delivery_state"
    ]


async def _dropped(reporting: Reporting, where: str, nats_bus: Bus, listener: Listener) -> str:
    """An e-mail whose connection the relay drops in DATA, `where` (before or after it queued it): AMBIGUOUS. After
    it queued it, the report may come before channels has recorded the lost answer (SendGrid's and SES's events are
    posted as the relay queues the message): the report settles the message while it is still SENDING, and no
    AMBIGUOUS is published (`dispatch_settled_by_receipt`)."""
    reporting.mailbox.drop_next = where
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch(campaign_id))
    if where == "before_queue":
        await published_state(listener, campaign_id, AMBIGUOUS)
        return campaign_id

    async def ambiguous_or_settled() -> bool:
        heard = {update.state for update in updates(listener, campaign_id)}
        return bool(heard & {AMBIGUOUS, SENT, DELIVERED})

    await eventually(ambiguous_or_settled)
    return campaign_id


@pytest.mark.parametrize("reporting", ["dsn", "dsn-one-command-at-a-time"], indirect=True)
async def test_every_email_asks_for_its_report_and_the_report_makes_it_delivered(
    reporting: Reporting, nats_bus: Bus, listener: Listener
) -> None:
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch(campaign_id))

    message = await _state(reporting.channels, campaign_id, DELIVERED)
    # The report comes back as soon as the relay queued the message; if it overtakes the relay's answer to DATA,
    # the receipt is what settles the hand-over.
    assert _delivery_steps(message)[-2:] == [
        ("SENT", "2.0.0 Ok: queued"),
        ("DELIVERED", "receipt: delivered 2.0.0"),
    ] or _delivery_steps(message)[-1] == ("DELIVERED", "receipt after SENDING: delivered 2.0.0")
    assert len(reporting.mailbox.for_campaign(campaign_id)) == 1
    # The returner counts a report once its SMTP session has ended (QUIT answered), which may come after the
    # mailbox recorded it and the message turned DELIVERED (CI red on 5860f1b).
    await eventually(lambda: asyncio.sleep(0, reporting.returner.delivered == 1))
    assert reporting.returner.failed == []
    # The request, as the relay took it: a report of success and of failure, headers only, the campaign ID as ENVID.
    options = reporting.mailbox.options[-1]
    assert options == (
        ["RET=HDRS", f"ENVID={xtext(signed_envelope_id(campaign_id, TRACKING_SECRET))}"],
        ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;priya@example.in"],
    )
    assert reporting.mailbox.senders[-1] == RETURN_PATH


@pytest.mark.parametrize("reporting", ["sendgrid", "ses"], indirect=True)
async def test_through_an_esp_every_email_names_its_outreach_and_its_events_make_it_delivered(
    reporting: Reporting, nats_bus: Bus, listener: Listener
) -> None:
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch(campaign_id))

    message = await _state(reporting.channels, campaign_id, DELIVERED)
    # The ESP's processed (SendGrid) or Send (SES) can overtake the relay's answer to DATA: then the receipt is what
    # made it SENT.
    (sent_step, sent_detail), delivered_step = _delivery_steps(message)[-2:]
    assert (sent_step, delivered_step) == ("SENT", ("DELIVERED", "receipt"))
    assert sent_detail in ("2.0.0 Ok: queued", "receipt after SENDING")
    (sent,) = reporting.mailbox.for_campaign(campaign_id)
    if isinstance(reporting.events, SesEventPoster):
        assert sent["X-SES-MESSAGE-TAGS"] == f"xsell_campaign_id={campaign_id}"
        assert sent["X-SES-CONFIGURATION-SET"] == CONFIGURATION_SET
    else:
        assert json.loads(str(sent["X-SMTPAPI"])) == {"unique_args": {"xsell_campaign_id": campaign_id}}
    # No DSN is asked of an ESP's relay: it reports by its webhook.
    assert reporting.mailbox.options[-1] == ([], [])
    assert reporting.events is not None and reporting.events.failed == []


@pytest.mark.parametrize("reporting", ["dsn", "sendgrid", "ses"], indirect=True)
async def test_an_email_the_relay_took_before_the_answer_was_lost_is_settled_by_its_report(
    reporting: Reporting, nats_bus: Bus, listener: Listener
) -> None:
    campaign_id = await _dropped(reporting, "after_queue", nats_bus, listener)
    message = await _state(reporting.channels, campaign_id, DELIVERED)
    # The first report after the loss settles it: a DSN of delivery, or SendGrid's processed or SES's Send (then its
    # delivered or Delivery).
    settled = next(detail for name, detail in _delivery_steps(message) if detail.startswith("receipt after"))
    # After AMBIGUOUS; or, when the report overtook the lost answer's record, while the hand-over was still SENDING.
    assert settled in (
        "receipt after AMBIGUOUS: delivered 2.0.0",
        "receipt after AMBIGUOUS",
        "receipt after SENDING: delivered 2.0.0",
        "receipt after SENDING",
    )
    assert await reporting.resender().step() == 0  # settled: nothing is handed over again
    assert len(reporting.mailbox.for_campaign(campaign_id)) == 1


@pytest.mark.parametrize("reporting", ["dsn", "sendgrid", "ses"], indirect=True)
async def test_an_email_the_relay_never_took_is_handed_over_again_once_and_then_reports(
    reporting: Reporting, nats_bus: Bus, listener: Listener
) -> None:
    campaign_id = await _dropped(reporting, "before_queue", nats_bus, listener)
    assert reporting.mailbox.for_campaign(campaign_id) == []
    assert await reporting.resender().step() == 0  # no report has come since: silence says nothing yet
    # Another e-mail reports back: reports are coming, so this one's silence means the relay never had it.
    other = new_campaign_id()
    await publish(nats_bus, dispatch(other))
    await _state(reporting.channels, other, DELIVERED)

    assert await reporting.resender().step() == 1
    message = await _state(reporting.channels, campaign_id, DELIVERED)
    # (The resender's clock runs two hours ahead, so its QUEUED step sorts after the hand-over it caused.)
    steps = _delivery_steps(message)
    # The report may overtake the relay's answer to DATA, and then it, not the answer, ends the second hand-over.
    handed_over_again = ["QUEUED", "SENDING", "AMBIGUOUS", "QUEUED", "SENDING", "DELIVERED"]
    assert sorted(name for name, _ in steps) in (sorted([*handed_over_again, "SENT"]), sorted(handed_over_again))
    assert ("QUEUED", resend_reason("email", 3600.0)) in steps
    assert len(reporting.mailbox.for_campaign(campaign_id)) == 1
    assert await reporting.resender().step() == 0


async def test_a_relay_that_offers_no_dsn_is_refused_and_its_emails_wait(
    start_channels: StartChannels, smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener
) -> None:
    channels = await start_channels(smtp_relay.port, smtp_delivery_reports=True)
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch(campaign_id))

    async def waiting() -> resources_pb2.Message | None:
        message = await message_if_any(channels, campaign_id)
        return message if message is not None and "offers no DSN" in message.timeline[-1].detail else None

    message = await eventually(waiting)
    assert message is not None and message.state == resources_pb2.DELIVERY_STATE_QUEUED
    assert "XSELL_CHANNELS_SMTP_DELIVERY_REPORTS" in message.timeline[-1].detail
    assert smtp_relay.mailbox.for_campaign(campaign_id) == []

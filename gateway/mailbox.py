"""The return-path mailbox on the gateway's edge: an SMTP server (aiosmtpd, on the gateway's loop) that receives the
reports mail servers send back and records each on channels, as the provider webhooks do: a bounce or a complaint as
the outreach's BOUNCED or COMPLAINED engagement (RecordEngagement), a delivery status notification of success as its
receipt (RecordDeliveryReceipt: DELIVERED, or SENT for a message relayed on). A report that carries the envelope id
channels signed also proves the relay took the message, so a bounce with it first settles a hand-over whose answer a
crash lost (a SENT receipt changes nothing else). The mailbox is public: a report of delivery without that signature is
dropped, and an unsigned bounce or complaint is recorded as the engagement alone."""

import asyncio
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session
from opentelemetry import trace

from gateway.bounces import NotAReport, Receipt, Report, read_report
from gateway.webhooks import Unrecorded, record_call
from plumbing.telemetry import CAMPAIGN_ID
from xsell.channels.v1 import resources_pb2 as channels_resources
from xsell.channels.v1 import service_pb2 as channels_pb2
from xsell.channels.v1 import service_pb2_grpc as channels_grpc

log = structlog.get_logger(__name__)

MAX_REPORT_BYTES = 10 * 1024 * 1024
"""A report returns the original message; larger mail is refused at DATA (RFC 1870 SIZE)."""


def engagement_request(report: Report) -> channels_pb2.RecordEngagementRequest:
    """The report as RecordEngagement takes it. Its request_id is the report's own Message-ID (or, without one, the
    outreach and the kind), so a report delivered twice is recorded once."""
    kind = channels_resources.EngagementKind.Name(report.kind)  # type: ignore[arg-type]
    return channels_pb2.RecordEngagementRequest(
        request_id=f"mailbox:{report.report_id or report.campaign_id + ':' + kind}"[:200],
        campaign_id=report.campaign_id,
        kind=report.kind,  # type: ignore[arg-type]
        detail=report.detail,
    )


def receipt_request(report: Report | Receipt) -> channels_pb2.RecordDeliveryReceiptRequest:
    """A success report as its receipt; a bounce or complaint as the SENT receipt it implies (the relay had it)."""
    if isinstance(report, Receipt):
        state, suffix, reason = report.state, "", report.detail
    else:
        state, suffix, reason = channels_resources.DELIVERY_STATE_SENT, ":sent", "a report came back"
    return channels_pb2.RecordDeliveryReceiptRequest(
        request_id=f"mailbox:{report.report_id or report.campaign_id}{suffix}"[:200],
        campaign_id=report.campaign_id,
        state=state,  # type: ignore[arg-type]
        reason=reason,
    )


class BounceMailbox:
    """aiosmtpd's handler. Every mail is read as a report: what is not one is accepted and dropped (a sender of
    auto-replies must not retry), a report about a message channels does not know is dropped too, and one channels
    cannot record now is deferred (451), so the reporting server tries again later."""

    def __init__(
        self,
        host: str,
        port: int,
        channels: channels_grpc.ChannelsServiceStub,
        *,
        message_id_domain: str,
        timeout_seconds: float,
        tracer: trace.Tracer,
        envelope_secret: str = "",
        hostname: str = "xsell-bounces",
    ) -> None:
        self.host, self.port = host, port
        self.channels = channels
        self.tracer = tracer
        self.message_id_domain = message_id_domain
        # The tracking secret channels signs each e-mail's envelope id with (plumbing.signing.signed_envelope_id).
        self.envelope_secret = envelope_secret
        self.timeout_seconds = timeout_seconds
        self.hostname = hostname
        self._stopped = asyncio.Event()
        self._ready = asyncio.Event()
        self._failure: OSError | None = None

    async def wait_ready(self) -> int:
        """The bound port once the mailbox listens; raises if it could not."""
        await self._ready.wait()
        if self._failure is not None:
            raise RuntimeError(f"bounce mailbox could not listen on {self.host}:{self.port}") from self._failure
        return self.port

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        try:
            report = read_report(raw, self.message_id_domain, self.envelope_secret)
        except NotAReport as reason:
            log.info("mailbox_mail_ignored", reason=str(reason))
            return "250 2.0.0 accepted, not a report about an xsell message"
        try:
            recorded = True
            if isinstance(report, Receipt) or report.signed:
                recorded = await record_call(
                    self.channels.RecordDeliveryReceipt,
                    receipt_request(report),
                    self.timeout_seconds,
                    self.tracer,
                    "gateway mailbox receipt",
                )
            if recorded and isinstance(report, Report):
                recorded = await record_call(
                    self.channels.RecordEngagement,
                    engagement_request(report),
                    self.timeout_seconds,
                    self.tracer,
                    "gateway mailbox engagement",
                )
        except Unrecorded:
            return "451 4.3.0 cannot record the report now; try again later"
        if not recorded:
            return "250 2.0.0 accepted, no such message"
        if isinstance(report, Receipt):
            kind = channels_resources.DeliveryState.Name(report.state).removeprefix("DELIVERY_STATE_")  # type: ignore[arg-type]
        else:
            kind = channels_resources.EngagementKind.Name(report.kind).removeprefix("ENGAGEMENT_KIND_")  # type: ignore[arg-type]
        log.info("mailbox_report_recorded", kind=kind, **{CAMPAIGN_ID: report.campaign_id})
        return "250 2.0.0 recorded"

    def _protocol(self) -> Any:
        return SMTP(self, hostname=self.hostname, data_size_limit=MAX_REPORT_BYTES, decode_data=False)

    async def run(self) -> None:
        try:
            server = await asyncio.get_running_loop().create_server(self._protocol, self.host, self.port)
        except OSError as error:
            self._failure = error
            self._ready.set()
            raise
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        log.info("bounce_mailbox_listening", port=self.port)
        try:
            await self._stopped.wait()
        finally:
            server.close()
            await server.wait_closed()

    async def stop(self) -> None:
        self._stopped.set()

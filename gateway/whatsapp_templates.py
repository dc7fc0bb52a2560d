"""Meta's template status webhook: a WhatsApp template Meta stops pauses the campaigns that send it.

Meta pauses a marketing template whose quality drops (for 3 hours, then 6), disables it after repeated pauses, and
may reject or delete it; every message sent with it then fails (132015 template paused, 132016 disabled...). The
WhatsApp app's webhook subscription field `message_template_status_update` says so at once:

    {"event": "PAUSED", "message_template_id": 123, "message_template_name": "lumpsum_offer_v2",
     "message_template_language": "en", "reason": "...", "other_info": {...}}

On PAUSED, DISABLED, REJECTED or PENDING_DELETION, each SCHEDULED or RUNNING campaign whose channel is WhatsApp with
that template (and language) is paused through campaigns' PauseCampaign, with the reason, by the client name
`whatsapp-template-status`: the rest of its audience waits for the template to be fixed or replaced (an operator
resumes it), instead of every message failing. A campaign that only falls back to WhatsApp is left running: its
people are reached on its own channel. FLAGGED (quality dropping: a pause may follow) is logged. Anything else
(APPROVED, REINSTATED...) changes nothing: resuming is the operator's decision.
"""

from typing import Any

import grpc
import structlog

from plumbing.grpc_server import CLIENT_METADATA
from xsell.campaigns.v1 import resources_pb2 as campaign_resources
from xsell.campaigns.v1 import service_pb2 as campaigns_pb2
from xsell.campaigns.v1 import service_pb2_grpc as campaigns_grpc
from xsell.type.v1 import channel_pb2

log = structlog.get_logger(__name__)

STOPPED = frozenset({"PAUSED", "DISABLED", "REJECTED", "PENDING_DELETION"})
"""Template events after which a message with the template fails."""
CLIENT = "whatsapp-template-status"
"""Who the campaigns' audit says paused them."""
SENDING = frozenset({campaign_resources.CAMPAIGN_STATE_SCHEDULED, campaign_resources.CAMPAIGN_STATE_RUNNING})
PAGE_SIZE = 500


class TemplatesUnavailable(Exception):
    """Campaigns could not be listed or paused now; Meta is asked to send the event again."""


async def on_template_status(
    campaigns: campaigns_grpc.CampaignsServiceStub, value: dict[str, Any], event_key: str, timeout: float
) -> list[str]:
    """Pauses the campaigns sending a template Meta stopped; returns their keys. `event_key` names this event (the
    signed body's digest), so Meta's retry of it pauses nothing twice (PauseCampaign's request_id)."""
    event = str(value.get("event", "")).upper()
    name = str(value.get("message_template_name", ""))
    language = str(value.get("message_template_language", ""))
    if event == "FLAGGED":
        log.warning("whatsapp_template_flagged", template=name, language=language)
    if event not in STOPPED or not name:
        return []
    said = str(value.get("reason") or "")
    reason = f"WhatsApp template {name} ({language or 'any language'}) {event} by Meta"
    if said and said.upper() != "NONE":
        reason += f": {said[:200]}"
    metadata = ((CLIENT_METADATA, CLIENT),)
    paused = []
    try:
        for campaign in await _sending(campaigns, name, language, timeout):
            request = campaigns_pb2.PauseCampaignRequest(
                request_id=f"wa-template:{event_key}:{campaign.campaign_key}",
                campaign_key=campaign.campaign_key,
                reason=reason,
            )
            try:
                await campaigns.PauseCampaign(request, timeout=timeout, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                continue  # paused, completed or cancelled meanwhile
            paused.append(campaign.campaign_key)
    except grpc.aio.AioRpcError as error:
        log.warning("whatsapp_template_not_applied", code=error.code().name, template=name)
        raise TemplatesUnavailable(error.code().name) from error
    log.warning("whatsapp_template_stopped", template=name, language=language, status=event, paused=len(paused))
    return paused


async def _sending(
    campaigns: campaigns_grpc.CampaignsServiceStub, name: str, language: str, timeout: float
) -> list[campaign_resources.Campaign]:
    """The SCHEDULED and RUNNING campaigns whose channel is WhatsApp with the template (in `language`, when given)."""
    found, token = [], ""
    while True:
        page = await campaigns.ListCampaigns(
            campaigns_pb2.ListCampaignsRequest(page_size=PAGE_SIZE, page_token=token), timeout=timeout
        )
        for campaign in page.campaigns:
            whatsapp = campaign.content.whatsapp
            if (
                campaign.state in SENDING
                and campaign.channel == channel_pb2.CHANNEL_WHATSAPP
                and whatsapp.template_name == name
                and (not language or not whatsapp.language_code or whatsapp.language_code == language)
            ):
                found.append(campaign)
        token = page.next_page_token
        if not token:
            return found

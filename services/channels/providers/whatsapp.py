"""WhatsApp in the WhatsApp Business Cloud API format: POST /{version}/{phone-number-id}/messages, a template.

Business-initiated messages must be templates Meta approved: `messaging_product: whatsapp`,
`type: template`, `template.name`, `template.language.code` and a body component whose text
parameters fill the template's {{1}}, {{2}}..., with the system user's access token as a bearer
token. The answer is `messages[0].id` (the wamid) or a Graph API `error` object with a numeric
`code`. The Cloud API takes no idempotency key: the campaign ID travels in
`biz_opaque_callback_data`, which Meta returns in every status webhook of the message.
"""

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import quote

from plumbing.bounces import whatsapp_unreachable
from services.channels.delivery import (
    Accepted,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderThrottled,
    ProviderUnavailable,
)
from services.channels.outgoing import OutgoingWhatsApp
from services.channels.providers.base import (
    ProviderAnswer,
    ProviderRequest,
    failure_for_status,
    json_body,
    retry_after_seconds,
    scrub,
)

# Graph API error codes that mean "slow down" whatever the HTTP status: throughput (130429),
# pair rate (131056), spam rate (131048), application and account rate limits (4, 80007).
THROTTLE_CODES = frozenset({4, 80007, 130429, 131048, 131056})
# Codes that mean "the service had a problem, try again": 131000 something went wrong, 131016 unavailable, 2 / 1.
TRANSIENT_CODES = frozenset({1, 2, 131000, 131016})


@dataclass(frozen=True)
class WhatsAppCloud:
    """The WhatsApp adapter; one business phone number and its access token."""

    base_url: str
    api_version: str
    phone_number_id: str
    access_token: str

    provider = "whatsapp"
    deduplicates = False

    def request(self, campaign_id: str, profile_id: str, message: OutgoingWhatsApp) -> ProviderRequest:
        template: dict[str, object] = {"name": message.template_name, "language": {"code": message.language_code}}
        if message.parameters:
            template["components"] = [
                {"type": "body", "parameters": [{"type": "text", "text": text} for text in message.parameters]}
            ]
        document = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            # The Cloud API takes the number without the plus.
            "to": message.to_number.lstrip("+"),
            "type": "template",
            "template": template,
            "biz_opaque_callback_data": campaign_id,
        }
        return ProviderRequest("POST", self._url, json_body(document), self._headers)

    @functools.cached_property
    def _url(self) -> str:
        return (
            f"{self.base_url.rstrip('/')}/{quote(self.api_version, safe='')}/"
            f"{quote(self.phone_number_id, safe='')}/messages"
        )

    @functools.cached_property
    def _headers(self) -> Mapping[str, str]:
        # The same for every message of the number: built once (a read-only view, as each request shares it).
        return MappingProxyType({"Authorization": f"Bearer {self.access_token}", "Content-Type": "application/json"})

    def accepted(self, answer: ProviderAnswer) -> Accepted:
        document = answer.json()
        if 200 <= answer.status < 300:
            messages = document.get("messages")
            first = messages[0] if isinstance(messages, list) and messages else None
            wamid = first.get("id") if isinstance(first, dict) else None
            if not isinstance(wamid, str) or not wamid:
                raise ProviderOutcomeUnknown(
                    f"whatsapp HTTP {answer.status} without messages[0].id: it may have been accepted"
                )
            status = first.get("message_status", "accepted") if isinstance(first, dict) else "accepted"
            return Accepted(wamid, f"whatsapp {status}")
        error = document.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        message = str(error.get("message", "")) if isinstance(error, dict) else ""
        detail = f"error {code}: {message}" if code is not None else answer.body[:200].decode(errors="replace")
        if code in THROTTLE_CODES:
            raise ProviderThrottled(f"whatsapp {scrub(detail)}", retry_after_seconds(answer.headers))
        if code in TRANSIENT_CODES:
            raise ProviderUnavailable(f"whatsapp {scrub(detail)}")
        if unreachable := whatsapp_unreachable(code):
            # Not on WhatsApp (or in Meta's experiment), said at once rather than in a failed status: a bounce too.
            raise ProviderRejected(f"whatsapp {scrub(detail)}", bounce=unreachable)
        raise failure_for_status(self.provider, answer, detail)

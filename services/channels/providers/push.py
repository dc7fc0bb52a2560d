"""Push in the FCM HTTP v1 format: POST /v1/projects/{project}/messages:send with an OAuth 2.0 bearer token.

The body is `{"message": {"token", "notification": {"title", "body"}, "data": {...}, "android",
"apns"}}`; every `data` value is a string. FCM answers `{"name": "projects/<p>/messages/<id>"}` or
a google.rpc error whose `details` carry an `FcmError` `errorCode` (UNREGISTERED, INVALID_ARGUMENT,
QUOTA_EXCEEDED, UNAVAILABLE...). FCM takes no idempotency key; the campaign ID is the Android
collapse key and notification tag and the APNs collapse id, so a second copy of the same outreach
replaces the first on the device instead of showing twice, and it travels in `data.campaign_id`.
"""

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import quote

from services.channels.delivery import Accepted, ProviderOutcomeUnknown, ProviderRejected
from services.channels.outgoing import OutgoingPush
from services.channels.providers.base import ProviderAnswer, ProviderRequest, failure_for_status, json_body, scrub

# FCM error codes that are about this device or message and will not change on a retry.
PERMANENT_ERRORS = frozenset({"UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH"})


@dataclass(frozen=True)
class FcmPush:
    """The push adapter; one Firebase project and an OAuth 2.0 access token for it."""

    base_url: str
    project_id: str
    access_token: str

    provider = "push"
    deduplicates = False

    def request(self, campaign_id: str, profile_id: str, message: OutgoingPush) -> ProviderRequest:
        data = {"campaign_id": campaign_id}
        if message.deep_link:
            data["deep_link"] = message.deep_link
        document = {
            "message": {
                "token": message.device_token,
                "notification": {"title": message.title, "body": message.body},
                "data": data,
                "android": {"collapse_key": campaign_id, "notification": {"tag": campaign_id}},
                "apns": {"headers": {"apns-collapse-id": campaign_id[:64]}},
            }
        }
        return ProviderRequest("POST", self._url, json_body(document), self._headers)

    @functools.cached_property
    def _url(self) -> str:
        return f"{self.base_url.rstrip('/')}/v1/projects/{quote(self.project_id, safe='')}/messages:send"

    @functools.cached_property
    def _headers(self) -> Mapping[str, str]:
        # The same for every message with the fixed token (a minted one replaces it: send_with_token): built once.
        return MappingProxyType(
            {"Authorization": f"Bearer {self.access_token}", "Content-Type": "application/json; charset=UTF-8"}
        )

    def accepted(self, answer: ProviderAnswer) -> Accepted:
        document = answer.json()
        if 200 <= answer.status < 300:
            name = document.get("name")
            if not isinstance(name, str) or not name:
                raise ProviderOutcomeUnknown(
                    f"push HTTP {answer.status} without a message name: it may have been accepted"
                )
            return Accepted(name, "fcm accepted")
        error = document.get("error")
        error_code = _fcm_error_code(error)
        status = error.get("status", "") if isinstance(error, dict) else ""
        message = error.get("message", "") if isinstance(error, dict) else ""
        detail = f"{error_code or status} {message}".strip()
        if error_code in PERMANENT_ERRORS:
            # UNREGISTERED: the app is gone from the device (uninstalled, its token expired): a bounce of the token.
            bounce = "UNREGISTERED permanent" if error_code == "UNREGISTERED" else ""
            raise ProviderRejected(f"push HTTP {answer.status}: {scrub(detail)}", bounce=bounce)
        raise failure_for_status(self.provider, answer, detail)


def _fcm_error_code(error: object) -> str:
    if not isinstance(error, dict):
        return ""
    for entry in error.get("details") or []:
        if isinstance(entry, dict) and str(entry.get("@type", "")).endswith("google.firebase.fcm.v1.FcmError"):
            return str(entry.get("errorCode", ""))
    return ""

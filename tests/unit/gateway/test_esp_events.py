"""SendGrid's Event Webhook: its signature as SendGrid computes it, and how an event names its outreach."""

import json

import pytest

from gateway.esp_events import bounce_detail, campaign_id_of, signature_holds, verification_key

# SendGrid's own example of a signed post (its libraries test their verifiers against it): a key, a signature, the
# timestamp header and the body, which ends with CRLF as SendGrid's posts do.
PUBLIC_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6"
    "wEA3F+g=="
)
SIGNATURE = "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
TIMESTAMP = "1600112502"
BODY = (
    json.dumps(
        [
            {
                "email": "hello@world.com",
                "event": "dropped",
                "reason": "Bounced Address",
                "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
                "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
                "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
                "timestamp": 1600112492,
            }
        ],
        sort_keys=True,
        separators=(",", ":"),
    )
    + "\r\n"
).encode()
OTHER_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj+y7GjUuFDb/R1N"
    "Ge1OPzpA=="
)


def test_sendgrids_own_signed_post_verifies() -> None:
    assert signature_holds(verification_key(PUBLIC_KEY), TIMESTAMP, BODY, SIGNATURE)


@pytest.mark.parametrize(
    ("key", "timestamp", "body", "signature"),
    [
        pytest.param(OTHER_KEY, TIMESTAMP, BODY, SIGNATURE, id="another-key"),
        pytest.param(PUBLIC_KEY, "1600112503", BODY, SIGNATURE, id="another-timestamp"),
        pytest.param(PUBLIC_KEY, TIMESTAMP, BODY.replace(b"dropped", b"delivered"), SIGNATURE, id="tampered-body"),
        pytest.param(PUBLIC_KEY, TIMESTAMP, BODY, SIGNATURE[:-8] + "AAAAAAA=", id="tampered-signature"),
        pytest.param(PUBLIC_KEY, TIMESTAMP, BODY, "not base64!", id="garbage-signature"),
        pytest.param(PUBLIC_KEY, TIMESTAMP, BODY, "", id="no-signature"),
    ],
)
def test_anything_else_does_not(key: str, timestamp: str, body: bytes, signature: str) -> None:
    assert not signature_holds(verification_key(key), timestamp, body, signature)


@pytest.mark.parametrize("key", ["", "not base64!", "aGVsbG8=", PUBLIC_KEY[:40]])
def test_a_key_that_is_not_one_is_refused_saying_so(key: str) -> None:
    with pytest.raises(ValueError, match="not a base64 DER public key"):
        verification_key(key)


@pytest.mark.parametrize(
    ("event", "domain", "campaign_id"),
    [
        ({"xsell_campaign_id": "CSELL-NOV-T06-0884", "smtp-id": "<x@y>"}, "mail.bank.in", "CSELL-NOV-T06-0884"),
        ({"smtp-id": "<CSELL-NOV-T06-0884@mail.bank.in>"}, "mail.bank.in", "CSELL-NOV-T06-0884"),
        ({"smtp-id": "<CSELL-NOV-T06-0884@MAIL.bank.in>"}, "mail.bank.in", "CSELL-NOV-T06-0884"),
        ({"smtp-id": "<CSELL-NOV-T06-0884@elsewhere.in>"}, "mail.bank.in", ""),
        ({"smtp-id": "<CSELL-NOV-T06-0884@elsewhere.in>"}, "", "CSELL-NOV-T06-0884"),
        ({"smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>"}, "mail.bank.in", ""),
        ({"xsell_campaign_id": "has space"}, "mail.bank.in", ""),
        ({"xsell_campaign_id": 884}, "mail.bank.in", ""),
        ({}, "", ""),
    ],
)
def test_an_event_names_its_outreach_by_our_unique_arg_or_our_message_id(
    event: dict[str, object], domain: str, campaign_id: str
) -> None:
    assert campaign_id_of(event, domain) == campaign_id


def test_a_bounce_keeps_its_status_and_kind_never_the_servers_text() -> None:
    bounce = {"status": "5.1.1", "type": "bounce", "reason": "550 5.1.1 <priya@example.in>: user unknown"}
    assert bounce_detail(bounce) == "5.1.1 permanent"
    assert bounce_detail({"status": "5.7.1", "type": "blocked"}) == "5.7.1 blocked"
    assert bounce_detail({"status": "priya@example.in"}) == "5.0.0 permanent"

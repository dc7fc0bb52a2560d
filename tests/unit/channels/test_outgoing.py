"""Validation of SMS, WhatsApp, push and webhook requests, and what adapters make of provider answers."""

import hashlib
import hmac
import json

import pytest

from services.addresses import MAX_ADDRESS
from services.channels.delivery import (
    READ_PER_LIMIT,
    DeliveryState,
    DispatchAction,
    MalformedDispatch,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderThrottled,
    ProviderUnavailable,
    dispatch_action,
    receipt_outcome,
)
from services.channels.outgoing import (
    MAX_PAYLOAD_DEPTH,
    OutgoingPush,
    OutgoingSms,
    OutgoingWhatsApp,
    validate_push,
    validate_sms,
    validate_webhook,
    validate_whatsapp,
)
from services.channels.providers.base import ProviderAnswer, json_body, scrub
from services.channels.providers.push import FcmPush
from services.channels.providers.sms import ExotelSms
from services.channels.providers.webhook import SignedWebhook
from services.channels.providers.whatsapp import WhatsAppCloud

SMS = OutgoingSms("+919876543210", "ACMEBK", "1107161234567890123", "Your loan is pre-approved")


def test_a_valid_sms_is_returned_trimmed() -> None:
    assert validate_sms(OutgoingSms(" +919876543210 ", " ACMEBK ", " 1107 ", "x")).to_number == "+919876543210"


@pytest.mark.parametrize(
    ("sms", "says"),
    [
        (None, "no sms message"),
        (OutgoingSms("9876543210", "ACMEBK", "1107", "x"), "E.164"),
        (OutgoingSms("+919876543210", "", "1107", "x"), "sender header"),
        (OutgoingSms("+919876543210", "ACMEBK", " ", "x"), "DLT requires the registered template id"),
        (OutgoingSms("+919876543210", "ACMEBK", "1107", " "), "sms.body is empty"),
        (OutgoingSms("+919876543210", "ACMEBK", "1107", "x" * 2001), "longer than 2000"),
    ],
)
def test_malformed_sms_says_what_is_wrong(sms: OutgoingSms | None, says: str) -> None:
    with pytest.raises(MalformedDispatch, match=says):
        validate_sms(sms)


def test_an_address_longer_than_segments_checks_is_refused_naming_its_field() -> None:
    """Segments' CheckSuppression refuses addresses over MAX_ADDRESS, and nothing is sent unchecked: refused here, with
    the field named, rather than asked about until the last attempt."""
    assert validate_push(OutgoingPush("t" * MAX_ADDRESS, "t", "b", "")).device_token == "t" * MAX_ADDRESS
    with pytest.raises(MalformedDispatch, match=rf"push\.device_token is 5000 characters; at most {MAX_ADDRESS}"):
        validate_push(OutgoingPush("t" * 5000, "t", "b", ""))
    # Measured as segments would be asked: the padding counts.
    padded = " " * MAX_ADDRESS + "+919876543210"
    with pytest.raises(MalformedDispatch, match=r"sms\.to_number is 4109 characters"):
        validate_sms(OutgoingSms(padded, "ACMEBK", "1107", "x"))
    with pytest.raises(MalformedDispatch, match=r"whatsapp\.to_number is 4109 characters"):
        validate_whatsapp(OutgoingWhatsApp(padded, "t", "en", ()))


def test_whatsapp_and_push_need_their_essentials() -> None:
    with pytest.raises(MalformedDispatch, match="must be a template"):
        validate_whatsapp(OutgoingWhatsApp("+919876543210", "", "en", ()))
    with pytest.raises(MalformedDispatch, match="language_code"):
        validate_whatsapp(OutgoingWhatsApp("+919876543210", "t", "", ()))
    with pytest.raises(MalformedDispatch, match="device_token"):
        validate_push(OutgoingPush(" ", "t", "b", ""))
    with pytest.raises(MalformedDispatch, match="neither title nor body"):
        validate_push(OutgoingPush("tok", "", " ", ""))


@pytest.mark.parametrize(
    ("url", "payload", "says"),
    [
        ("", "{}", "webhook.url is empty"),
        ("ftp://crm.bank.in/x", "{}", r"absolute http\(s\) URL"),
        ("https://evil.example/x", "{}", "not in the channels webhook_allowed_hosts"),
        ("https://crm.bank.in/x", "{", "not JSON"),
        ("https://crm.bank.in/x", "[1]", "JSON object"),
    ],
)
def test_a_webhook_goes_only_to_allowed_hosts_with_a_json_object(url: str, payload: str, says: str) -> None:
    with pytest.raises(MalformedDispatch, match=says):
        validate_webhook(url, payload, allowed_hosts=frozenset({"crm.bank.in"}))


def _nested(levels: int) -> str:
    return '{"a":' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        # JSON reads an unpaired escape as a lone surrogate, which no UTF-8 body can hold: found in the hand-over, it
        # was "may have reached the provider" after eight attempts.
        ('{"customer_name": "Priya \\ud800"}', "webhook.payload_json is not valid UTF-8 text"),
        ('{"\\udc00": 1}', "webhook.payload_json is not valid UTF-8 text"),
        ('{"tasks": [{"note": "x\\ud83d"}]}', "webhook.payload_json is not valid UTF-8 text"),
        # Past json's recursion (RecursionError, retried eight times then dead-lettered unrecorded), and past what
        # orjson writes.
        (_nested(50_000), f"webhook.payload_json nests deeper than {MAX_PAYLOAD_DEPTH} levels"),
        (_nested(MAX_PAYLOAD_DEPTH + 1), f"webhook.payload_json nests deeper than {MAX_PAYLOAD_DEPTH} levels"),
        ('{"n": ' + "9" * 5000 + "}", "webhook.payload_json holds a number with more digits than can be read"),
    ],
    ids=["lone-surrogate", "surrogate-key", "surrogate-nested", "nested-50000", "nested-one-too-deep", "5000-digits"],
)
def test_a_webhook_payload_that_cannot_be_written_is_malformed_naming_the_field(payload: str, says: str) -> None:
    with pytest.raises(MalformedDispatch) as raised:
        validate_webhook("https://crm.bank.in/x", payload, allowed_hosts=frozenset({"crm.bank.in"}))
    assert raised.value.reason.startswith(says)


def test_a_webhook_payload_as_deep_as_allowed_with_paired_surrogates_is_written() -> None:
    adapter = SignedWebhook("s3cret", clock=lambda: 1764000000.0)
    for payload in (_nested(MAX_PAYLOAD_DEPTH), '{"greeting": "\\ud83d\\ude00 Priya"}'):
        webhook = validate_webhook("https://h/x", payload, allowed_hosts=frozenset({"h"}))
        assert json.loads(adapter.request("C1", "p1", webhook).body)["payload"] == json.loads(payload)


def test_only_a_provider_that_deduplicates_is_asked_again_after_a_crash() -> None:
    assert dispatch_action(DeliveryState.SENDING, provider_deduplicates=True) is DispatchAction.SEND
    assert dispatch_action(DeliveryState.SENDING, provider_deduplicates=False) is DispatchAction.MARK_AMBIGUOUS
    assert dispatch_action(DeliveryState.SENT, provider_deduplicates=True) is DispatchAction.SKIP


def test_the_webhook_signature_covers_the_timestamp_and_the_raw_body() -> None:
    adapter = SignedWebhook("s3cret", clock=lambda: 1764000000.0)
    request = adapter.request(
        "CSELL-NOV-T06-0884", "prof_1", validate_webhook("https://h/x", "{}", allowed_hosts=frozenset({"h"}))
    )
    expected = hmac.new(b"s3cret", b"1764000000." + request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Xsell-Signature"] == f"v1={expected}"
    assert request.headers["Idempotency-Key"] == "CSELL-NOV-T06-0884"
    assert json.loads(request.body)["campaign_id"] == "CSELL-NOV-T06-0884"


@pytest.mark.parametrize(
    "document",
    [
        {"to": "919876543210", "template": {"name": "offer", "components": [{"text": "₹5,00,000 — Priya"}]}},
        # orjson writes integers up to 64 bits; a webhook payload may carry a larger one, which json writes instead.
        {"campaign_id": "C1", "payload": {"account": 123456789012345678901234567890, "ratio": 0.1, "ok": True}},
    ],
)
def test_provider_bodies_are_compact_utf8_json(document: dict[str, object]) -> None:
    assert json_body(document) == json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def test_an_answer_that_is_not_a_json_object_reads_as_empty() -> None:
    assert ProviderAnswer(200, {}, b"\xff not json").json() == {}
    assert ProviderAnswer(200, {}, b"[1, 2]").json() == {}
    assert ProviderAnswer(200, {}, b"").json() == {}


def _answer(status: int, document: object, **headers: str) -> ProviderAnswer:
    return ProviderAnswer(status, headers, json.dumps(document).encode())


def test_provider_error_answers_are_classified() -> None:
    sms = ExotelSms("http://x", "sid", "k", "t", "1101000000000000001")
    with pytest.raises(ProviderThrottled) as throttled:
        sms.accepted(_answer(429, {"RestException": {"Message": "slow"}}, **{"Retry-After": "7"}))
    assert throttled.value.retry_after == 7.0
    with pytest.raises(ProviderUnavailable):
        sms.accepted(_answer(503, {}))
    # An edge's 502 / 504: the provider may have taken it, as when our own read times out.
    for edge in (502, 504):
        with pytest.raises(ProviderOutcomeUnknown, match="from an edge: the provider may have the message"):
            sms.accepted(_answer(edge, {}))
    with pytest.raises(ProviderRejected):
        sms.accepted(_answer(400, {"RestException": {"Message": "bad To"}}))
    whatsapp = WhatsAppCloud("http://x", "v21.0", "1", "t")
    with pytest.raises(ProviderThrottled):
        whatsapp.accepted(_answer(400, {"error": {"code": 130429, "message": "Rate limit hit"}}))
    with pytest.raises(ProviderUnavailable):
        whatsapp.accepted(_answer(500, {"error": {"code": 131000, "message": "Something went wrong"}}))
    push = FcmPush("http://x", "p", "t")
    sender_mismatch = {
        "error": {
            "status": "PERMISSION_DENIED",
            "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "SENDER_ID_MISMATCH"}
            ],
        }
    }
    with pytest.raises(ProviderRejected, match="SENDER_ID_MISMATCH"):
        push.accepted(_answer(403, sender_mismatch))
    with pytest.raises(ProviderOutcomeUnknown):
        push.accepted(_answer(200, {}))  # a 2xx without the message name may be an acceptance: never retried blind


def test_a_success_answer_without_the_providers_id_is_an_unknown_outcome_never_a_retry() -> None:
    """The provider said yes but not which message: sending again could reach the person twice (AMBIGUOUS)."""
    with pytest.raises(ProviderOutcomeUnknown, match="may have been accepted"):
        ExotelSms("http://x", "sid", "k", "t", "1101000000000000001").accepted(_answer(200, {"SMSMessage": {}}))
    with pytest.raises(ProviderOutcomeUnknown, match="may have been accepted"):
        WhatsAppCloud("http://x", "v21.0", "1", "t").accepted(_answer(200, {"messages": []}))
    with pytest.raises(ProviderOutcomeUnknown, match="may have been accepted"):
        FcmPush("http://x", "p", "t").accepted(ProviderAnswer(200, {}, b"<html>ok</html>"))


def test_provider_text_is_scrubbed_of_numbers_and_addresses() -> None:
    assert scrub("'To' +91 98765 43210 or priya@example.in refused") == "'To' [number] or [address] refused"
    written_otherwise = (
        '+91.98765.43210 / "priya k"@example.in / प्रिया@example.in / priya＠example.in / (+91)98765/43210'
    )
    assert scrub(written_otherwise) == "[number] / [address] / [address] / [address] / ([number]"
    # Addresses before numbers: a mailbox named by a number goes whole, its domain with it.
    assert scrub("queued for <9876543210@sms.example.in>") == "queued for <[address]>"
    # What provider texts hold beside them stays: an SMTP status, a relay's address, an error code.
    kept = "SMTP 550 on RCPT: 5.7.1 client [203.0.113.5] blocked; whatsapp error 131026"
    assert scrub(kept) == kept
    # So does a date, which has eight digits too; a number written in its place does not.
    dated = "template paused until 2026-11-29T10:00:00Z (since 2026-11-28)"
    assert scrub(dated) == dated
    assert scrub("call 9876-54-3210 or 2026-13-29") == "call [number] or [number]"


@pytest.mark.parametrize(
    "text",
    [
        "+91\u00a098765\u00a043210",  # non-breaking spaces, as a word processor or WhatsApp Web writes them
        "+91\t98765\t43210",
        "+91\n98765\r\n43210",
        "+91\u200998765\u202f43210",  # thin space, narrow no-break space
        "+91\u2011 98765\u201343210",  # non-breaking hyphen, en dash
        "98765\u201443210",  # em dash
        "98765 \u2212 43210",  # minus sign
        "98765\uff0d43210",  # full-width hyphen-minus
        "\uff0b91\uff0898765\uff0943210",  # full-width plus and brackets
        "98765\u200b43210",  # zero-width space
        "98765\u00ad43210",  # soft hyphen
    ],
)
def test_a_number_split_by_any_space_dash_or_invisible_character_is_scrubbed(text: str) -> None:
    assert scrub(f"undeliverable to {text} today") == "undeliverable to [number] today"


@pytest.mark.parametrize(
    "text",
    [
        "x" * 1_000_000,
        "x" * 1_000_000 + "@",
        "1" + "(" * 1_000_000,
        "a@" * 500_000,
        "1" + "\u2014" * 1_000_000,
        "1\u00a0" * 500_000,
        "1\u200b" * 500_000 + "x",
    ],
    ids=["run", "run-then-at", "digit-then-brackets", "many-ats", "digit-then-dashes", "nbsp-digits", "invisible"],
)
def test_a_caller_text_of_any_length_is_scrubbed_in_one_pass_and_cut(text: str) -> None:
    """A RecordEngagement detail of 100,000 characters held channels' event loop for 21 s: only what can be kept is
    read (READ_PER_LIMIT), and the patterns are linear. No time is asserted; a quadratic scrub would stop the suite."""
    assert len(scrub(text)) <= 300
    assert len(scrub(text, limit=1000)) <= 1000
    assert len(scrub(text, limit=100_000)) <= 100_000


@pytest.mark.parametrize("tail", ["+91 98765 43210", "+91\u00a098765\u00a043210", "ravi.kumar@example.in"])
@pytest.mark.parametrize("cut", [1, 5, 8, 12])
def test_a_number_or_an_address_cut_by_the_read_bound_leaves_no_head(tail: str, cut: int) -> None:
    """Only READ_PER_LIMIT × limit characters are read; addresses before a number shrink the text, so what stood at
    the bound reaches the answer. Cut there, "+91 9876" has too few digits to be a number and "ravi.kumar@exa" is
    no address: the cut word goes."""
    bound = 300 * READ_PER_LIMIT
    # 26 addresses that become "[address] " each, the last one long enough that the bound falls `cut` characters
    # into the tail.
    addresses = ("a" * 80 + "@example.in ") * 25
    addresses += "a" * (bound - len(addresses) - cut - len("@example.in ")) + "@example.in "
    scrubbed = scrub(addresses + tail + " and more")
    assert scrubbed.startswith("[address] " * 25 + "[address]"), scrubbed
    assert not any(char.isdigit() for char in scrubbed) and "ravi" not in scrubbed, scrubbed


@pytest.mark.parametrize(
    ("current", "receipt", "outcome"),
    [
        (DeliveryState.SENT, DeliveryState.DELIVERED, DeliveryState.DELIVERED),
        (DeliveryState.AMBIGUOUS, DeliveryState.DELIVERED, DeliveryState.DELIVERED),
        (DeliveryState.SENDING, DeliveryState.DELIVERED, DeliveryState.DELIVERED),
        (DeliveryState.AMBIGUOUS, DeliveryState.FAILED, DeliveryState.FAILED),
        (DeliveryState.SENT, DeliveryState.FAILED, DeliveryState.FAILED),
        (DeliveryState.DELIVERED, DeliveryState.FAILED, None),
        (DeliveryState.DELIVERED, DeliveryState.DELIVERED, None),
        (DeliveryState.FAILED, DeliveryState.FAILED, None),
        (DeliveryState.FAILED, DeliveryState.DELIVERED, DeliveryState.DELIVERED),
        # The provider's "accepted" settles only a hand-over with no recorded outcome.
        (DeliveryState.AMBIGUOUS, DeliveryState.SENT, DeliveryState.SENT),
        (DeliveryState.SENDING, DeliveryState.SENT, DeliveryState.SENT),
        (DeliveryState.QUEUED, DeliveryState.SENT, DeliveryState.SENT),
        (DeliveryState.SENT, DeliveryState.SENT, None),
        (DeliveryState.DELIVERED, DeliveryState.SENT, None),
        (DeliveryState.FAILED, DeliveryState.SENT, None),
    ],
)
def test_a_receipt_is_what_the_provider_did_and_a_delivery_is_final(
    current: DeliveryState, receipt: DeliveryState, outcome: DeliveryState | None
) -> None:
    assert receipt_outcome(current, receipt) is outcome


@pytest.mark.parametrize("receipt", [DeliveryState.QUEUED, DeliveryState.SENDING, DeliveryState.AMBIGUOUS])
def test_a_receipt_is_sent_delivered_or_failed(receipt: DeliveryState) -> None:
    with pytest.raises(ValueError):
        receipt_outcome(DeliveryState.SENT, receipt)

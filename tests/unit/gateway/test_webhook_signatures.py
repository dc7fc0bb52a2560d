"""Provider callback signatures and the replay memory, without a server."""

from gateway.webhooks import REPLAY_MEMORY, ReplayGuard, twilio_signature

URL = "https://xsell.bank.example/webhooks/sms/exotel/tok?x=1"
FIELDS = {
    "SmsSid": "b6a1",
    "Status": "failed-dnd",
    "DateSent": "2026-11-28 09:15:02",
    "CustomField": "CSELL-NOV-T06-0884",
    "Body": "a b+c",
}


def test_the_sms_signature_is_twilios() -> None:
    # The value twilio-python 9.13.0's RequestValidator("s3cret").compute_signature(URL, FIELDS) gives.
    assert twilio_signature("s3cret", URL, FIELDS.items()) == "uaC8xh+OomDMgTk8DhjaU5C9z00="


def test_the_sms_signature_covers_the_url_every_field_and_the_key() -> None:
    signed = twilio_signature("s3cret", URL, FIELDS.items())
    assert twilio_signature("s3cret", URL, reversed(list(FIELDS.items()))) == signed  # the order sent does not matter
    assert twilio_signature("other", URL, FIELDS.items()) != signed
    assert twilio_signature("s3cret", URL.replace("x=1", "x=2"), FIELDS.items()) != signed
    assert twilio_signature("s3cret", URL, {**FIELDS, "Status": "sent"}.items()) != signed
    assert twilio_signature("s3cret", URL, {**FIELDS, "Extra": ""}.items()) != signed


def test_the_replay_memory_forgets_after_the_window_and_past_its_bound() -> None:
    now = [1000.0]
    guard = ReplayGuard(60.0, clock=lambda: now[0])
    guard.remember(b"a")
    assert guard.seen(b"a") and not guard.seen(b"b")
    now[0] += 59.0
    assert guard.seen(b"a")
    now[0] += 1.0
    assert not guard.seen(b"a")
    for index in range(REPLAY_MEMORY + 1):
        guard.remember(index.to_bytes(4, "big"))
    assert not guard.seen((0).to_bytes(4, "big")) and guard.seen(REPLAY_MEMORY.to_bytes(4, "big"))

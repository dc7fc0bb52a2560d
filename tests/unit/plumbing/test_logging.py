"""No personal data reaches a log line, wherever it is planted."""

import io
import json

import pytest
import structlog

from plumbing.logging import _MAY_HOLD_PII, _REDACTIONS, REDACTED, redact_text, setup_logging

PLANTED = {
    "email": "priya.sharma@example.co.in",
    "phone": "+91 98765 43210",
    "phone_bare": "9876543210",
    "pan": "ABCPS1234K",
    "account": "001234567890",
    "card": "4111 1111 1111 1111",
    "intl_phone": "+1 (555) 010-9999",
    "intl_phone_spaced": "+44 20 7946 0958",
    "email_upper": "Priya.Sharma@Example.IN",
    "email_idn": "प्रिया@उदाहरण.भारत",
}


@pytest.fixture
def log_stream() -> io.StringIO:
    stream = io.StringIO()
    setup_logging("test", "debug", stream=stream)
    yield stream
    structlog.contextvars.clear_contextvars()


def test_planted_pii_is_redacted_everywhere_in_a_log_line(log_stream: io.StringIO) -> None:
    log = structlog.get_logger("t")
    log.info(
        f"sent to {PLANTED['email']}",
        recipient=PLANTED["email"],
        nested={"phone": PLANTED["phone"], "list": [PLANTED["pan"], PLANTED["account"]]},
        note=f"card {PLANTED['card']} phone {PLANTED['phone_bare']}",
        status=f"to {PLANTED['intl_phone']} or {PLANTED['intl_phone_spaced']}",
        template=f"{PLANTED['email_upper']} {PLANTED['email_idn']}",
        campaign_id="CSELL-NOV-T06-0884",
        loan_number="LA-2025-0001",
        amount_paise=174000000,
    )
    line = log_stream.getvalue()
    for value in PLANTED.values():
        assert value not in line
    record = json.loads(line)
    decoded = json.dumps(record, ensure_ascii=False)  # the line may escape what is not ASCII
    for value in PLANTED.values():
        assert value not in decoded
    assert record["recipient"] == REDACTED
    # Identifiers that are not personal data survive.
    assert record["campaign_id"] == "CSELL-NOV-T06-0884"
    assert record["loan_number"] == "LA-2025-0001"
    assert record["amount_paise"] == 174000000


def test_asyncios_tls_close_warning_is_dropped_and_its_other_warnings_kept(log_stream: io.StringIO) -> None:
    import logging

    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.warning("returning true from eof_received() has no effect when using ssl")
    asyncio_log.warning("Executing <Task> took 0.2 seconds")
    lines = [json.loads(line)["event"] for line in log_stream.getvalue().splitlines()]
    assert lines == ["Executing <Task> took 0.2 seconds"]


def test_the_smtp_servers_traffic_is_left_out_and_its_warnings_kept(log_stream: io.StringIO) -> None:
    import logging

    smtp_log = logging.getLogger("mail.log")  # aiosmtpd's
    smtp_log.info("('127.0.0.1', 42576) >> b'QUIT'")
    smtp_log.info("('127.0.0.1', 42576) Connection lost during _handle_client()")
    smtp_log.warning("('127.0.0.1', 42576) SMTP session exception")
    lines = [json.loads(line)["event"] for line in log_stream.getvalue().splitlines()]
    assert lines == ["('127.0.0.1', 42576) SMTP session exception"]


def test_stdlib_library_logs_are_redacted_too(log_stream: io.StringIO) -> None:
    import logging

    logging.getLogger("some.library").warning("could not deliver to %s", PLANTED["email"])
    assert PLANTED["email"] not in log_stream.getvalue()
    assert REDACTED in log_stream.getvalue()


@pytest.mark.parametrize(
    "text",
    [
        "CSELL-NOV-T06-0884",
        "LA-2025-0001",
        "2026-11-26T03:32:35+00:00",
        "evt_01JDAZ3XQ4",
        "seg_01JDAZ3XQ4K5",
        "+05:30",
        "lag +12.34 ms",
        "https://sns.ap-south-1.amazonaws.com/SimpleNotificationService-1234.pem",
        # Figures and identifiers that only look like numbers or addresses (session 25's review).
        "+12.345678",
        "elapsed=71234.56789",
        "https://registry.npmjs.org/@types/node",
        "durable segments-engagement@v2",
        "ghcr.io/xsell/channels@sha256:0d4c",
        "react@18.2.0",
        # With Unicode dashes: an identifier's and a date's digits are still too few for a number.
        "LA\u20132025\u20130001",
        "2026\u201311\u201326",
        "+05\u201330",
    ],
)
def test_identifiers_and_timestamps_are_not_mistaken_for_pii(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        *PLANTED.values(),
        "1 2 3 4 5 6 7 8 9",  # an account number split by single spaces: no four digits in a row
        "0-9-8-7-6-5-4-3-2-1",
        "98765-43210",
        "call 9876543210 now",
        "x@y",
        "ABCPS1234K and CSELL-NOV-T06-0884",
        "12-34",
        "98765\u201343210",
        "9\u200b8\u200b7\u200b6\u200b5\u200b4\u200b3\u200b2\u200b1",
        "1\u20132\u20133\u20134",
        "no digits at all",
        "",
    ],
)
def test_the_quick_check_passes_unchanged_only_what_no_pattern_would_change(text: str) -> None:
    fully = text
    for redaction in _REDACTIONS:
        fully = redaction(fully)
    assert redact_text(text) == fully
    if _MAY_HOLD_PII.search(text) is None:
        assert fully == text


@pytest.mark.parametrize(
    "text",
    [
        "x" * 200_000 + "@",  # a long run read once from its start, not once from each character
        "a@" * 100_000,
        '"' * 200_000 + "@x",
        "+1" + "2" * 200_000 + "a",  # not tried again split every other way
        "+" + " " * 200_000 + "1",
        "1." * 100_000,
        "+" + "\u2014" * 200_000 + "1",
        "+1" + "\u2013" * 200_000 + "2",
        "9\u00a0" * 100_000,
        "98765\u2014" * 40_000,
    ],
    ids=[
        "run-then-at",
        "many-ats",
        "quotes",
        "plus-digits-letter",
        "plus-spaces",
        "dotted-digits",
        "plus-dashes",
        "plus-digit-dashes",
        "nbsp-digits",
        "dashed-groups",
    ],
)
def test_redaction_reads_a_hostile_text_in_one_pass(text: str) -> None:
    """Every pattern is linear in the text's length: a log line may carry whatever a caller sent (a quadratic one took
    10 s for 50,000 characters, an exponential one longer than this suite). No time is asserted: a pattern that
    backtracks again would stop the suite here, not make it slower."""
    redacted = redact_text(text)
    assert len(redacted) <= len(REDACTED) * len(text)


@pytest.mark.parametrize(
    "text",
    [
        '"priya k"@example.in',
        "priya＠example.in",
        "priya@exämple.in",
        "(+91) 98765 43210",
        "write to a@b.co.in.",
        # Split by what a word processor, WhatsApp Web or a copy from a PDF puts between the groups.
        "+91\u00a098765\u00a043210",
        "+91\u200998765\u202f43210",
        "+91\n98765\n43210",
        "98765\u201343210",
        "98765 \u2014 43210",
        "+91\u201198765\u201143210",
        "98765\u200b43210",
        "9876\u00ad543210",
        "\uff0b91\uff0898765\uff0943210",
        "+1\u00a0(555)\u00a0010\u20139999",
        "0012\u20133456\u20137890",
    ],
)
def test_addresses_and_numbers_written_other_ways_are_redacted(text: str) -> None:
    assert text.strip("(") not in redact_text(text)
    assert REDACTED in redact_text(text)

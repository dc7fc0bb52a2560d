"""The delivery rules: what a dispatch does in each state, request validation, provider answers, redaction."""

import pytest

from services.channels.delivery import (
    DeliveryState,
    DispatchAction,
    MalformedDispatch,
    OutgoingEmail,
    ProviderRejected,
    ProviderUnavailable,
    dispatch_action,
    failure_for_reply,
    link_host,
    link_without_query,
    redact,
    validate_email,
)


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (None, DispatchAction.SEND),
        (DeliveryState.QUEUED, DispatchAction.SEND),
        (DeliveryState.SENDING, DispatchAction.MARK_AMBIGUOUS),
        (DeliveryState.SENT, DispatchAction.SKIP),
        (DeliveryState.DELIVERED, DispatchAction.SKIP),
        (DeliveryState.FAILED, DispatchAction.SKIP),
        (DeliveryState.AMBIGUOUS, DispatchAction.SKIP),
    ],
)
def test_a_message_is_handed_to_the_provider_only_from_queued(
    state: DeliveryState | None, action: DispatchAction
) -> None:
    assert dispatch_action(state) is action


def _email(**overrides: str) -> OutgoingEmail:
    fields = {"to_address": "a@b.in", "from_name": "", "subject": "s", "html_body": "<p>x</p>", "text_body": ""}
    return OutgoingEmail(**(fields | overrides))


def test_valid_email_is_returned_trimmed() -> None:
    assert validate_email("CHANNEL_EMAIL", _email(to_address=" a@b.in ")).to_address == "a@b.in"


@pytest.mark.parametrize(
    ("channel", "email", "says"),
    [
        ("CHANNEL_EMAIL", None, "no email message"),
        ("CHANNEL_EMAIL", _email(to_address=" "), "to_address is empty"),
        ("CHANNEL_EMAIL", _email(to_address="not-an-address"), "local@domain"),
        # One recipient per message, written as it is in the envelope and the To header.
        ("CHANNEL_EMAIL", _email(to_address="priya\x00@example.in"), "control characters"),
        ("CHANNEL_EMAIL", _email(to_address="priya\x7f@example.in"), "control characters"),
        ("CHANNEL_EMAIL", _email(to_address="priya@example.in,evil@attacker.example"), "one plain ASCII address"),
        ("CHANNEL_EMAIL", _email(to_address="Priya <priya@example.in>"), "one plain ASCII address"),
        ("CHANNEL_EMAIL", _email(to_address="a@b@c.in"), "one plain ASCII address"),
        ("CHANNEL_EMAIL", _email(html_body="", text_body=" "), "neither html_body nor text_body"),
        # Longer than segments checks suppressions for: refused, not asked about until the last attempt.
        ("CHANNEL_EMAIL", _email(to_address="p" * 5000 + "@example.in"), "email.to_address is 5011 characters"),
        ("CHANNEL_SMS", _email(), "read as an e-mail"),
    ],
)
def test_malformed_requests_say_what_is_missing(channel: str, email: OutgoingEmail | None, says: str) -> None:
    with pytest.raises(MalformedDispatch) as raised:
        validate_email(channel, email)
    assert says in raised.value.reason


def test_smtp_4xx_is_retried_and_5xx_is_final() -> None:
    assert isinstance(failure_for_reply(451, "RCPT", "try later"), ProviderUnavailable)
    rejected = failure_for_reply(550, "RCPT", "5.1.1 <priya@example.in>: user unknown")
    assert isinstance(rejected, ProviderRejected)
    assert "priya" not in rejected.reason
    assert rejected.reason.startswith("SMTP 550 on RCPT")
    assert rejected.bounce == "5.1.1 permanent"


@pytest.mark.parametrize(
    ("code", "command", "text", "bounce"),
    [
        (550, "RCPT", "5.1.1 <priya@example.in>: user unknown", "5.1.1 permanent"),
        (550, "MAIL/RCPT", "5.1.2 Host unknown", "5.1.2 permanent"),
        (556, "RCPT", "5.1.10 Recipient address has null MX", "5.1.10 permanent"),
        (550, "RCPT", "5.7.1 Recipient address rejected: access denied", ""),  # policy, not the address
        (552, "RCPT", "5.2.2 Mailbox full", ""),
        (550, "RCPT", "5.2.1 Mailbox disabled, not accepting messages", "5.2.1 permanent"),
        (550, "RCPT", "Recipient address rejected", ""),  # no enhanced status: nothing to go on
        (554, "DATA", "5.1.1 user unknown", ""),  # not about a recipient's address at RCPT
    ],
)
def test_a_refused_recipient_is_a_bounce_only_when_its_status_says_the_address_is_bad(
    code: int, command: str, text: str, bounce: str
) -> None:
    rejected = failure_for_reply(code, command, text)
    assert isinstance(rejected, ProviderRejected) and rejected.bounce == bounce


def test_a_relay_wanting_auth_or_tls_is_a_settings_problem_retried_not_a_rejected_message() -> None:
    for code in (530, 538):
        waiting = failure_for_reply(code, "MAIL", "5.7.0 Authentication required")
        assert isinstance(waiting, ProviderUnavailable) and "XSELL_CHANNELS_SMTP_" in waiting.reason


def test_a_sender_refused_by_the_relays_policy_is_retried_but_a_refused_recipient_is_final() -> None:
    sender = failure_for_reply(553, "MAIL", "5.7.1 <offers@bank.in>: Sender address rejected: not owned by user")
    assert isinstance(sender, ProviderUnavailable) and "RETURN_PATH" in sender.reason
    assert isinstance(failure_for_reply(550, "RCPT", "5.7.1 Recipient address rejected"), ProviderRejected)
    assert isinstance(failure_for_reply(554, "DATA", "5.7.1 Message rejected as spam"), ProviderRejected)


@pytest.mark.parametrize(
    ("code", "command", "text", "reason"),
    [
        # Relays quote the recipient, and a mailbox named by a mobile number quotes the number.
        (
            550,
            "RCPT",
            "5.1.1 <priya@example.in>: user +91 98765 43210 unknown",
            "SMTP 550 on RCPT: 5.1.1 <[address]>: user [number] unknown",
        ),
        (550, "RCPT", "5.1.1 mailbox 9876543210 unknown", "SMTP 550 on RCPT: 5.1.1 mailbox [number] unknown"),
        (554, "DATA", "5.7.1 refused: call 98765-43210", "SMTP 554 on DATA: 5.7.1 refused: call [number]"),
        (451, "MAIL", "4.3.0 try later", "SMTP 451 on MAIL: 4.3.0 try later"),
    ],
)
def test_a_refusals_reason_keeps_its_codes_and_no_number_or_address(
    code: int, command: str, text: str, reason: str
) -> None:
    assert failure_for_reply(code, command, text).reason == reason


def test_redact_removes_addresses_and_bounds_length() -> None:
    assert redact("rejected   <x.y+z@mail.example.in>\nnow") == "rejected <[address]> now"
    assert len(redact("a" * 1000)) == 300


def test_a_link_in_an_event_keeps_no_query_or_fragment() -> None:
    assert (
        link_without_query("https://bank.example.in/apply?o=T06&pan=ABCDE1234F#top") == "https://bank.example.in/apply"
    )
    assert link_without_query("http://[::1") == ""


def test_link_host_keeps_only_the_host() -> None:
    assert link_host("https://Bank.example.in/offer?pan=ABCDE1234F") == "bank.example.in"
    assert link_host("") == ""
    assert link_host("http://[bad") == ""

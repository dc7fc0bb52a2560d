"""SES through SNS: the string SNS signs as AWS documents it, its two signature versions, the hosts its certificates
may come from, and what each SES event records about its outreach."""

import base64
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from gateway.ses_events import (
    SNS_CERT_URL_PATTERN,
    Engagement,
    Receipt,
    UntrustedCertificate,
    campaign_id_of,
    cert_url_allowed,
    pinned_certificates,
    read_event,
    signature_holds,
    signing_key,
    sns_time,
    string_to_sign,
)
from xsell.channels.v1 import resources_pb2 as channels_resources

DOMAIN = "mail.bank.example.in"
OUTREACH = "CSELL-NOV-T06-0884"
TOPIC = "arn:aws:sns:ap-south-1:123456789012:xsell-ses-events"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)

# AWS's own examples of the string to sign ("Verifying the signatures of Amazon SNS messages").
AWS_NOTIFICATION = {
    "Type": "Notification",
    "MessageId": "4d4dc071-ddbf-465d-bba8-08f81c89da64",
    "TopicArn": "arn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P",
    "Subject": "My subject",
    "Message": "My Test Message",
    "Timestamp": "2019-01-31T04:37:04.321Z",
    "SignatureVersion": "1",
    "SigningCertURL": "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-a86cb10b4e1f29c941702d737128f7b6.pem",
    "UnsubscribeURL": "https://sns.us-east-2.amazonaws.com/?Action=Unsubscribe",
}
AWS_NOTIFICATION_SIGNED = (
    "Message\nMy Test Message\nMessageId\n4d4dc071-ddbf-465d-bba8-08f81c89da64\nSubject\nMy subject\n"
    "Timestamp\n2019-01-31T04:37:04.321Z\nTopicArn\narn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P\n"
    "Type\nNotification\n"
)
AWS_CONFIRMATION = {
    "Type": "SubscriptionConfirmation",
    "MessageId": "3d891288-136d-417f-bc05-901c108273ee",
    "Token": "233...",
    "TopicArn": "arn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P",
    "Message": "My Test Message",
    "SubscribeURL": "https://sns.us-east-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-east-2:"
    "123456789012:s4-MySNSTopic-1G1WEFCOXTC0P&Token=233...",
    "Timestamp": "2019-01-31T19:25:13.719Z",
    "SignatureVersion": "1",
}
AWS_CONFIRMATION_SIGNED = (
    "Message\nMy Test Message\nMessageId\n3d891288-136d-417f-bc05-901c108273ee\nSubscribeURL\nhttps://sns.us-east-2."
    "amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P"
    "&Token=233...\nTimestamp\n2019-01-31T19:25:13.719Z\nToken\n233...\nTopicArn\narn:aws:sns:us-east-2:123456789012:"
    "s4-MySNSTopic-1G1WEFCOXTC0P\nType\nSubscriptionConfirmation\n"
)


def test_the_string_to_sign_is_awss_own_example_for_a_notification_and_a_confirmation() -> None:
    assert string_to_sign(AWS_NOTIFICATION) == AWS_NOTIFICATION_SIGNED.encode()
    assert string_to_sign(AWS_CONFIRMATION) == AWS_CONFIRMATION_SIGNED.encode()
    unsubscribed = {**AWS_CONFIRMATION, "Type": "UnsubscribeConfirmation"}
    assert (
        string_to_sign(unsubscribed)
        == AWS_CONFIRMATION_SIGNED.replace("SubscriptionConfirmation", "UnsubscribeConfirmation").encode()
    )


def test_a_notification_without_a_subject_signs_none_and_a_message_missing_a_field_signs_nothing() -> None:
    without_subject = {key: value for key, value in AWS_NOTIFICATION.items() if key != "Subject"}
    assert string_to_sign(without_subject) == AWS_NOTIFICATION_SIGNED.replace("Subject\nMy subject\n", "").encode()
    assert string_to_sign({**AWS_CONFIRMATION, "Token": None}) is None
    assert string_to_sign({**AWS_NOTIFICATION, "Message": {"eventType": "Send"}}) is None
    assert string_to_sign({**AWS_NOTIFICATION, "Type": "Something"}) is None


def _signed(message: dict[str, Any], version: str, key: rsa.RSAPrivateKey = KEY) -> dict[str, Any]:
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signed = {**message, "SignatureVersion": version}
    signature = key.sign(string_to_sign(signed) or b"", padding.PKCS1v15(), algorithm)
    return {**signed, "Signature": base64.b64encode(signature).decode()}


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("message", [AWS_NOTIFICATION, AWS_CONFIRMATION], ids=["notification", "confirmation"])
def test_both_signature_versions_verify(message: dict[str, Any], version: str) -> None:
    assert signature_holds(KEY.public_key(), _signed(message, version))


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param({**_signed(AWS_NOTIFICATION, "1"), "SignatureVersion": "2"}, id="sha1-called-sha256"),
        pytest.param({**_signed(AWS_NOTIFICATION, "2"), "SignatureVersion": "1"}, id="sha256-called-sha1"),
        pytest.param({**_signed(AWS_NOTIFICATION, "2"), "SignatureVersion": "3"}, id="unknown-version"),
        pytest.param({**_signed(AWS_NOTIFICATION, "2"), "Message": "Another message"}, id="tampered-message"),
        pytest.param({**_signed(AWS_NOTIFICATION, "2"), "TopicArn": TOPIC}, id="another-topic"),
        pytest.param({**_signed(AWS_NOTIFICATION, "2"), "Subject": None}, id="subject-dropped"),
        pytest.param({**_signed(AWS_CONFIRMATION, "2"), "SubscribeURL": "https://evil.example/"}, id="another-url"),
        pytest.param({**_signed(AWS_NOTIFICATION, "2"), "Signature": "not base64!"}, id="garbage-signature"),
        pytest.param({**_signed(AWS_NOTIFICATION, "2"), "Signature": ""}, id="no-signature"),
        pytest.param(
            _signed(AWS_NOTIFICATION, "2", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            id="another-key",
        ),
    ],
)
def test_anything_else_does_not(forged: dict[str, Any]) -> None:
    assert not signature_holds(KEY.public_key(), forged)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem", True),
        ("https://sns.ap-south-1.amazonaws.com/?Action=ConfirmSubscription&Token=2336", True),
        ("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-1.pem", True),
        ("http://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem", False),
        ("https://sns.us-east-1.amazonaws.com.evil.example/cert.pem", False),
        ("https://sns.us-east-1.amazonaws.com@evil.example/cert.pem", False),
        ("https://evil.example/https://sns.us-east-1.amazonaws.com/cert.pem", False),
        ("https://s3.amazonaws.com/sns.us-east-1.amazonaws.com/cert.pem", False),
        (" https://sns.us-east-1.amazonaws.com/cert.pem", False),
        ("https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-1.pem", True),
        ("https://sns.ap-southeast-5.amazonaws.com/SimpleNotificationService-1.pem", True),
        # S3's virtual-hosted bucket "sns", which whoever holds that bucket could fill.
        ("https://sns.s3.amazonaws.com/cert.pem", False),
        ("https://sns.s3-external-1.amazonaws.com/cert.pem", False),
        ("https://sns.s3.us-east-1.amazonaws.com/cert.pem", False),
        (None, False),
    ],
)
def test_certificates_come_only_from_snss_own_hosts(url: Any, allowed: bool) -> None:
    assert cert_url_allowed(url, re.compile(SNS_CERT_URL_PATTERN)) is allowed


def _certificate(key: Any, *, valid_from: datetime, valid_until: datetime) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(valid_from)
        .not_valid_after(valid_until)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def test_a_signing_key_is_an_rsa_certificates_valid_now() -> None:
    now = datetime(2026, 11, 28, tzinfo=UTC)
    pem = _certificate(KEY, valid_from=now - timedelta(days=1), valid_until=now + timedelta(days=1))
    key, valid_until = signing_key(pem, now)
    assert key.public_numbers() == KEY.public_key().public_numbers() and valid_until == now + timedelta(days=1)
    with pytest.raises(UntrustedCertificate, match="not valid now"):
        signing_key(pem, now + timedelta(days=2))
    with pytest.raises(UntrustedCertificate, match="not an RSA"):
        ec_key = ec.generate_private_key(ec.SECP256R1())
        signing_key(_certificate(ec_key, valid_from=now, valid_until=now + timedelta(days=1)), now)
    with pytest.raises(UntrustedCertificate, match="not a PEM"):
        signing_key(b"<html>Not found</html>", now)


def test_pinned_certificates_are_rsa_pem_certificates_or_refused_by_name() -> None:
    now = datetime(2026, 11, 28, tzinfo=UTC)
    pem = _certificate(KEY, valid_from=now, valid_until=now + timedelta(days=1)).decode()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bundle = pem + _certificate(other, valid_from=now, valid_until=now + timedelta(days=1)).decode()
    assert [c.public_key().public_numbers() for c in pinned_certificates(bundle)] == [  # type: ignore[union-attr]
        KEY.public_key().public_numbers(),
        other.public_key().public_numbers(),
    ]
    assert pinned_certificates("") == []
    with pytest.raises(ValueError, match="no PEM certificate"):
        pinned_certificates("MIIB... pasted without its BEGIN line")
    with pytest.raises(ValueError, match="not an RSA"):
        ec_key = ec.generate_private_key(ec.SECP256R1())
        pinned_certificates(_certificate(ec_key, valid_from=now, valid_until=now + timedelta(days=1)).decode())


def _mail(**overrides: Any) -> dict[str, Any]:
    """SES's `mail` object of a message channels sent through a configuration set, with our tag."""
    return {
        "timestamp": "2026-11-28T09:15:02.000Z",
        "source": "offers@bank.example.in",
        "sendingAccountId": "123456789012",
        "messageId": "0109019c1a2b3c4d-5e6f-0000",
        "destination": ["priya@example.in"],
        "headersTruncated": False,
        "headers": [
            {"name": "From", "value": "offers@bank.example.in"},
            {"name": "Message-ID", "value": f"<{OUTREACH}@{DOMAIN}>"},
        ],
        "commonHeaders": {"messageId": "0109019c1a2b3c4d-5e6f-0000", "subject": "Your offer"},
        "tags": {"ses:configuration-set": ["xsell"], "xsell_campaign_id": [OUTREACH]},
        **overrides,
    }


@pytest.mark.parametrize(
    ("mail", "domain", "campaign_id"),
    [
        pytest.param(_mail(), DOMAIN, OUTREACH, id="tag"),
        pytest.param(_mail(tags={}), DOMAIN, OUTREACH, id="message-id-header"),
        pytest.param(
            _mail(tags={}, headers=[], commonHeaders={"messageId": f"<{OUTREACH}@{DOMAIN}>"}),
            DOMAIN,
            OUTREACH,
            id="common-headers",
        ),
        pytest.param(_mail(tags={}), "elsewhere.in", "", id="another-domain"),
        pytest.param(_mail(tags={}), "", OUTREACH, id="any-domain"),
        pytest.param(_mail(tags={"xsell_campaign_id": ["has space"]}, headers=[]), DOMAIN, "", id="not-an-id"),
        pytest.param(_mail(tags={"xsell_campaign_id": OUTREACH}, headers=[]), DOMAIN, "", id="tag-not-a-list"),
        pytest.param({}, "", "", id="nothing"),
    ],
)
def test_an_event_names_its_outreach_by_our_tag_or_our_message_id(
    mail: dict[str, Any], domain: str, campaign_id: str
) -> None:
    assert campaign_id_of(mail, domain) == campaign_id


SES_ID = "ses:0109019c1a2b3c4d-5e6f-0000"


@pytest.mark.parametrize(
    ("event", "records"),
    [
        pytest.param(
            {"eventType": "Send", "send": {}}, [Receipt(f"{SES_ID}:send", channels_resources.DELIVERY_STATE_SENT)]
        ),
        pytest.param(
            {"eventType": "Delivery", "delivery": {"smtpResponse": "250 2.0.0 OK", "recipients": ["priya@example.in"]}},
            [Receipt(f"{SES_ID}:delivery", channels_resources.DELIVERY_STATE_DELIVERED)],
        ),
        pytest.param(
            # An identity's notification names its type otherwise; it records the same.
            {"notificationType": "Delivery", "delivery": {}},
            [Receipt(f"{SES_ID}:delivery", channels_resources.DELIVERY_STATE_DELIVERED)],
            id="notificationType",
        ),
        pytest.param(
            {
                "eventType": "Bounce",
                "bounce": {
                    "bounceType": "Permanent",
                    "bounceSubType": "General",
                    "bouncedRecipients": [
                        {
                            "emailAddress": "priya@example.in",
                            "action": "failed",
                            "status": "5.1.1",
                            "diagnosticCode": "smtp; 550 5.1.1 <priya@example.in>: user unknown",
                        }
                    ],
                },
            },
            # The status alone, never the diagnostic code (it names the address).
            [
                Receipt(f"{SES_ID}:bounce:sent", channels_resources.DELIVERY_STATE_SENT),
                Engagement(f"{SES_ID}:bounce", channels_resources.ENGAGEMENT_KIND_BOUNCED, "5.1.1 permanent"),
            ],
            id="Bounce-Permanent",
        ),
        pytest.param(
            {
                "eventType": "Bounce",
                "bounce": {"bounceType": "Permanent", "bouncedRecipients": [{"status": "priya@example.in"}]},
            },
            [
                Receipt(f"{SES_ID}:bounce:sent", channels_resources.DELIVERY_STATE_SENT),
                Engagement(f"{SES_ID}:bounce", channels_resources.ENGAGEMENT_KIND_BOUNCED, "5.0.0 permanent"),
            ],
            id="Bounce-Permanent-unparsed-status",
        ),
        pytest.param(
            {"eventType": "Bounce", "bounce": {"bounceType": "Transient", "bouncedRecipients": [{"status": "4.2.2"}]}},
            [],
            id="Bounce-Transient",
        ),
        pytest.param({"eventType": "Bounce", "bounce": {"bounceType": "Undetermined"}}, [], id="Bounce-Undetermined"),
        pytest.param(
            {"eventType": "Reject", "reject": {"reason": "Bad content"}},
            [Receipt(f"{SES_ID}:reject", channels_resources.DELIVERY_STATE_FAILED, "ses reject: Bad content")],
        ),
        pytest.param(
            {"eventType": "Rendering Failure", "failure": {"errorMessage": "Attribute 'name' is not present"}},
            [Receipt(f"{SES_ID}:rendering-failure", channels_resources.DELIVERY_STATE_FAILED, "ses rendering failure")],
        ),
        pytest.param(
            {"eventType": "Complaint", "complaint": {"complaintFeedbackType": "abuse"}},
            [Engagement(f"{SES_ID}:complaint", channels_resources.ENGAGEMENT_KIND_COMPLAINED, "abuse")],
        ),
        pytest.param(
            {"eventType": "Complaint", "complaint": {"complainedRecipients": [{"emailAddress": "priya@example.in"}]}},
            [Engagement(f"{SES_ID}:complaint", channels_resources.ENGAGEMENT_KIND_COMPLAINED, "complaint")],
            id="Complaint-without-feedback-type",
        ),
        pytest.param(
            {"eventType": "Open", "open": {"timestamp": "2026-11-28T10:00:00.000Z"}},
            [Engagement(f"{SES_ID}:open:2026-11-28T10:00:00.000Z", channels_resources.ENGAGEMENT_KIND_OPENED, "open")],
        ),
        pytest.param(
            {"eventType": "Click", "click": {"timestamp": "2026-11-28T10:01:00.000Z", "link": "https://bank.in/a"}},
            [
                Engagement(
                    f"{SES_ID}:click:2026-11-28T10:01:00.000Z",
                    channels_resources.ENGAGEMENT_KIND_CLICKED,
                    "click",
                    url="https://bank.in/a",
                )
            ],
        ),
        pytest.param({"eventType": "DeliveryDelay", "deliveryDelay": {"delayType": "MailboxFull"}}, []),
        pytest.param({"eventType": "Subscription", "subscription": {}}, []),
        pytest.param({"eventType": "Something new"}, [], id="unknown"),
    ],
)
def test_each_ses_event_records_what_it_reports(event: dict[str, Any], records: list[Any]) -> None:
    read = read_event({**event, "mail": _mail()}, DOMAIN)
    assert read is not None and read.campaign_id == OUTREACH and read.ses_message_id == SES_ID.removeprefix("ses:")
    assert list(read.records) == records


def test_an_event_about_another_systems_message_records_nothing() -> None:
    assert read_event({"eventType": "Delivery", "mail": _mail(tags={}, headers=[])}, DOMAIN) is None
    assert read_event({"eventType": "Delivery", "mail": _mail(messageId="")}, DOMAIN) is None
    assert read_event({"eventType": "Delivery"}, DOMAIN) is None


def test_snss_timestamp_reads_as_epoch_seconds() -> None:
    assert sns_time("2019-01-31T04:37:04.321Z") == datetime(2019, 1, 31, 4, 37, 4, 321000, tzinfo=UTC).timestamp()
    assert sns_time("2019-01-31T04:37:04") is None  # no zone: not SNS's
    assert sns_time("yesterday") is None
    assert sns_time(None) is None

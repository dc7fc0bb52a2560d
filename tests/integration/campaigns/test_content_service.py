"""Content over real gRPC, NATS, SQLite and PostgreSQL: channel fallback at release, checks, preview, test send."""

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy import select

from plumbing.bus import CAMPAIGN_ID_HEADER, Bus
from plumbing.db import Database
from services import streams
from services.campaigns import store
from tests.integration.campaigns import harness as harness_module
from tests.integration.campaigns.harness import (
    Harness,
    all_outreaches,
    approve,
    campaign_message,
    collect,
    create,
    member,
    programme_code,
    state_of,
)
from tests.waiting import eventually
from xsell.campaigns.v1 import events_pb2, resources_pb2, service_pb2, service_pb2_grpc
from xsell.type.v1 import channel_pb2

DLT_ID = "1107161234567890123"  # registered in services/campaigns/catalogs/templates.yaml
SMS_BODY = (
    "Dear {{ first_name }}, markets offer attractive entry points. A lumpsum of {{ offer_amount }} can "
    "complement your SIPs: {{ campaign_id }} -Fundsy"
)
HTML = (
    "<p>Hi {{ first_name }}, your portfolio is {{ total_aum | inr }}.</p>"
    "{% for fund in recommendations %}<li>{{ fund.name }} ({{ fund.category }})</li>{% endfor %}"
    '<a href="{{ unsubscribe_url }}">Unsubscribe</a>'
)


def _opted_in(profile: object) -> object:
    profile.attributes["whatsapp_opt_in"].bool_value = True  # type: ignore[attr-defined]
    return profile


# Reached on WhatsApp (opted in), SMS (phone, no opt-in), e-mail (only an address), nothing (no contact).
FALLBACK_MEMBERS = [
    _opted_in(member("c01", first_name="Asha", phone="+919812345601", email="c01@example.in")),
    member("c02", first_name="Ravi", phone="+919812345602", email="c02@example.in"),
    member("c03", first_name="Meera", email="c03@example.in"),
    member("c04", first_name="Kiran"),
]
FALLBACK_MEMBERS[2].attributes["fund_categories"].string_set_value.values.extend(["Hybrid", "Equity"])
FALLBACK_MEMBERS[2].attributes["total_aum"].money_value.minor_units = 17_40_000_00
FALLBACK_MEMBERS[2].attributes["total_aum"].money_value.currency_code = "INR"
for _member in FALLBACK_MEMBERS[:2]:
    _member.attributes["total_aum"].money_value.minor_units = 1_24_00_000_00
    _member.attributes["total_aum"].money_value.currency_code = "INR"


def multichannel(programme: str, **overrides: object) -> resources_pb2.Campaign:
    campaign = campaign_message(programme, channel=channel_pb2.CHANNEL_WHATSAPP, **overrides)
    campaign.fallback_channels.extend([channel_pb2.CHANNEL_SMS, channel_pb2.CHANNEL_EMAIL])
    campaign.content.email.html_template = HTML
    campaign.content.email.text_template = ""
    campaign.content.sms.CopyFrom(
        resources_pb2.SmsContent(dlt_template_id=DLT_ID, sender_id="FUNDSY", body_template=SMS_BODY)
    )
    campaign.content.whatsapp.CopyFrom(
        resources_pb2.WhatsAppContent(
            template_name="lumpsum_offer_v2",
            parameter_templates=["{{ first_name }}", "{{ offer_amount }}", "{{ total_aum | inr }}"],
        )
    )
    return campaign


def violation(error: grpc.aio.AioRpcError) -> str:
    """The field the google.rpc.BadRequest detail names."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)  # type: ignore[arg-type]
            for detail in status.details:
                bad_request = error_details_pb2.BadRequest()
                if detail.Unpack(bad_request):
                    return bad_request.field_violations[0].field
    return ""


@pytest.fixture
async def fallback_members(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    monkeypatch.setattr(harness_module, "MEMBERS", FALLBACK_MEMBERS)
    yield


async def test_release_renders_each_person_on_the_first_channel_they_can_be_reached_on(
    fallback_members: None, stub: service_pb2_grpc.CampaignsServiceStub, nats_bus: Bus
) -> None:
    programme = programme_code()
    created = await create(stub, multichannel(programme), "req-create")
    assert list(created.fallback_channels) == [channel_pb2.CHANNEL_SMS, channel_pb2.CHANNEL_EMAIL]
    assert created.content.sms.dlt_template_id == DLT_ID
    assert (await state_of(stub, created.campaign_key)).content == created.content
    await approve(stub, created.campaign_key)
    await stub.LaunchCampaign(
        service_pb2.LaunchCampaignRequest(request_id="req-launch", campaign_key=created.campaign_key)
    )

    async def completed() -> bool:
        return (await state_of(stub, created.campaign_key)).state == resources_pb2.CAMPAIGN_STATE_COMPLETED

    await eventually(completed)
    outreaches = {o.profile_id: o for o in await all_outreaches(stub, created.campaign_key)}
    assert {profile: o.channel for profile, o in outreaches.items()} == {
        "c01": channel_pb2.CHANNEL_WHATSAPP,
        "c02": channel_pb2.CHANNEL_SMS,
        "c03": channel_pb2.CHANNEL_EMAIL,
    }
    dispatches = {}
    for _, payload in await collect(nats_bus, streams.DISPATCH_REQUESTED, programme, 3):
        message = events_pb2.DispatchRequested.FromString(payload)
        dispatches[message.profile_id] = message
    whatsapp, sms, email = dispatches["c01"], dispatches["c02"], dispatches["c03"]
    assert whatsapp.WhichOneof("message") == "whatsapp" and not whatsapp.test
    assert whatsapp.whatsapp.to_number == "+919812345601"
    assert (whatsapp.whatsapp.template_name, whatsapp.whatsapp.language_code) == ("lumpsum_offer_v2", "en")
    assert list(whatsapp.whatsapp.parameters) == ["Asha", "₹17.4 lakh", "₹1.24 crore"]
    assert sms.WhichOneof("message") == "sms" and sms.channel == channel_pb2.CHANNEL_SMS
    assert (sms.sms.to_number, sms.sms.sender_id, sms.sms.dlt_template_id) == ("+919812345602", "FUNDSY", DLT_ID)
    assert sms.sms.body == (
        f"Dear Ravi, markets offer attractive entry points. A lumpsum of ₹17.4 lakh can complement your SIPs: "
        f"{outreaches['c02'].campaign_id} -Fundsy"
    )
    assert email.WhichOneof("message") == "email" and email.email.to_address == "c03@example.in"
    # Meera holds Hybrid and Equity: the first three other categories of the shipped catalog, in its order.
    assert "your portfolio is ₹17.4 lakh" in email.email.html_body
    assert (
        "<li>Short Duration Debt Fund - Direct Growth (Debt)</li>"
        "<li>Tax Saver (ELSS) Fund - Direct Growth (ELSS)</li>"
        "<li>Banking and Financial Services Fund - Direct Growth (Sectoral)</li>"
    ) in email.email.html_body


async def test_content_checks_refuse_at_create_naming_the_field(stub: service_pb2_grpc.CampaignsServiceStub) -> None:
    cases: list[tuple[resources_pb2.Campaign, str, str]] = []
    unknown = multichannel(programme_code())
    unknown.content.whatsapp.parameter_templates[2] = "{{ total_aun | inr }}"
    cases.append((unknown, "campaign.content.whatsapp.parameter_templates[2]", "did you mean total_aum"))
    unregistered = multichannel(programme_code())
    unregistered.content.sms.dlt_template_id = "1107000000000000001"
    cases.append((unregistered, "campaign.content.sms.dlt_template_id", "not a registered DLT template"))
    no_template = multichannel(programme_code())
    no_template.content.whatsapp.template_name = "lumpsum_offer_v9"
    cases.append((no_template, "campaign.content.whatsapp.template_name", "not an approved WhatsApp template"))
    unsafe = multichannel(programme_code())
    unsafe.content.email.html_template = HTML + "{{ offer.__class__ }}"
    cases.append((unsafe, "campaign.content.email.html_template", "may not use"))
    no_unsubscribe = multichannel(programme_code())
    no_unsubscribe.content.email.html_template = "<p>Hi {{ first_name }}</p>"
    cases.append((no_unsubscribe, "campaign.content.email.html_template", "unsubscribe link"))
    missing = multichannel(programme_code())
    missing.content.ClearField("sms")
    cases.append((missing, "campaign.content.sms", "a fallback channel"))
    for index, (campaign, field, fragment) in enumerate(cases):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await create(stub, campaign, f"req-bad-{index}")
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert violation(error.value) == field
        assert (error.value.details() or "").startswith(f"{field}: ")
        assert fragment in (error.value.details() or ""), error.value.details()
    assert not (await stub.ListCampaigns(service_pb2.ListCampaignsRequest())).campaigns


async def test_submit_checks_the_stored_content_against_the_current_catalog(
    harness: Harness, stub: service_pb2_grpc.CampaignsServiceStub
) -> None:
    submitted = await create(stub, campaign_message(programme_code()), "req-create-a")
    submit_a = service_pb2.SubmitCampaignRequest(request_id="req-submit-a", campaign_key=submitted.campaign_key)
    first = await stub.SubmitCampaign(submit_a)
    assert first.campaign.state == resources_pb2.CAMPAIGN_STATE_SUBMITTED
    created = await create(stub, campaign_message(programme_code()), "req-create-b")
    # The catalog lost `city` after both campaigns were written: submitting the second is refused...
    harness.segments.ATTRIBUTES = dict.fromkeys(("email", "first_name", "time_zone"), 1)  # type: ignore[misc]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.SubmitCampaign(
            service_pb2.SubmitCampaignRequest(request_id="req-submit-b", campaign_key=created.campaign_key)
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation(error.value) == "campaign.content.email.html_template"
    assert "'city'" in (error.value.details() or "")
    assert (await state_of(stub, created.campaign_key)).state == resources_pb2.CAMPAIGN_STATE_DRAFT
    # ...while a retry of the submit that succeeded gets its first answer.
    assert await stub.SubmitCampaign(submit_a) == first


async def test_preview_renders_every_channel_for_a_named_profile(stub: service_pb2_grpc.CampaignsServiceStub) -> None:
    programme = programme_code()
    campaign = multichannel(programme)
    campaign.content.push.CopyFrom(
        resources_pb2.PushContent(title_template="{{ first_name }}, a lumpsum idea", body_template="{{ city }}")
    )
    created = await create(stub, campaign, "req-create")
    response = await stub.PreviewCampaign(
        service_pb2.PreviewCampaignRequest(campaign_key=created.campaign_key, profile_id="t01")
    )
    previews = {preview.channel: preview for preview in response.previews}
    assert list(previews) == [
        channel_pb2.CHANNEL_EMAIL,
        channel_pb2.CHANNEL_SMS,
        channel_pb2.CHANNEL_WHATSAPP,
        channel_pb2.CHANNEL_PUSH,
    ]
    email = previews[channel_pb2.CHANNEL_EMAIL]
    assert "Hi Tara, your portfolio is ₹4.52 lakh" in email.html_body
    # Tara holds Equity and Hybrid: Debt, ELSS then Sectoral (International is for Premium and HNI tiers).
    assert email.html_body.count("<li>") == 3 and "(Debt)</li><li>" in email.html_body
    assert not email.render_error and not email.unavailable_reason
    sms = previews[channel_pb2.CHANNEL_SMS]
    assert sms.text_body.startswith("Dear Tara, markets offer") and f"{programme}-" in sms.text_body
    assert sms.text_body.endswith("-0000 -Fundsy")  # sequence 0000 is never issued
    assert list(previews[channel_pb2.CHANNEL_WHATSAPP].parameters) == ["Tara", "₹17.4 lakh", "₹4.52 lakh"]
    push = previews[channel_pb2.CHANNEL_PUSH]
    assert (push.title, push.text_body) == ("Tara, a lumpsum idea", "Thane")
    assert push.unavailable_reason == "no push_token attribute"

    # p06 has no city (the e-mail's text needs none, the push does) and no phone.
    only_push = await stub.PreviewCampaign(
        service_pb2.PreviewCampaignRequest(
            campaign_key=created.campaign_key, profile_id="p06", channel=channel_pb2.CHANNEL_PUSH
        )
    )
    [preview] = only_push.previews
    assert preview.render_error == "undefined: 'city' is undefined"
    sms_for_p06 = await stub.PreviewCampaign(
        service_pb2.PreviewCampaignRequest(
            campaign_key=created.campaign_key, profile_id="p06", channel=channel_pb2.CHANNEL_SMS
        )
    )
    assert sms_for_p06.previews[0].unavailable_reason == "no phone attribute"

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.PreviewCampaign(
            service_pb2.PreviewCampaignRequest(campaign_key=created.campaign_key, profile_id="nobody")
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and violation(error.value) == "profile_id"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.PreviewCampaign(
            service_pb2.PreviewCampaignRequest(
                campaign_key=created.campaign_key, profile_id="t01", channel=channel_pb2.CHANNEL_WEBHOOK
            )
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and violation(error.value) == "channel"


async def test_test_send_dispatches_flagged_tests_that_are_never_real_outreaches(
    database_url: str, stub: service_pb2_grpc.CampaignsServiceStub, nats_bus: Bus
) -> None:
    programme = programme_code()
    created = await create(stub, multichannel(programme), "req-create")
    request = service_pb2.TestSendCampaignRequest(
        request_id="req-test-send",
        campaign_key=created.campaign_key,
        profile_id="t01",
        recipients=[
            service_pb2.TestRecipient(email_address="qa@fundsy.example"),
            service_pb2.TestRecipient(phone_number="+919800000001"),
        ],
    )
    response = await stub.TestSendCampaign(request)
    assert [o.channel for o in response.outreaches] == [channel_pb2.CHANNEL_EMAIL, channel_pb2.CHANNEL_WHATSAPP]
    assert all(o.test and o.profile_id == "t01" for o in response.outreaches)
    assert await stub.TestSendCampaign(request) == response  # a retry sends nothing more

    dispatches = [
        events_pb2.DispatchRequested.FromString(payload)
        for _, payload in await collect(nats_bus, streams.DISPATCH_REQUESTED, programme, 2)
    ]
    assert len(dispatches) == 2 and all(d.test for d in dispatches)
    by_channel = {d.WhichOneof("message"): d for d in dispatches}
    assert by_channel["email"].email.to_address == "qa@fundsy.example"
    assert "Hi Tara" in by_channel["email"].email.html_body
    assert by_channel["whatsapp"].whatsapp.to_number == "+919800000001"
    assert list(by_channel["whatsapp"].whatsapp.parameters) == ["Tara", "₹17.4 lakh", "₹4.52 lakh"]

    # Not a real outreach: the campaign's count is unchanged and attribution is never told.
    assert (await state_of(stub, created.campaign_key)).outreach_count == 0
    looked_up = await stub.GetOutreach(service_pb2.GetOutreachRequest(campaign_id=response.outreaches[0].campaign_id))
    assert looked_up.outreach.test
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            rows = (await session.execute(select(store.outbox.c.subject, store.outbox.c.headers))).all()
    finally:
        await db.dispose()
    test_ids = {o.campaign_id for o in response.outreaches}
    subjects = [subject for subject, headers in rows if headers.get(CAMPAIGN_ID_HEADER) in test_ids]
    assert sorted(subjects) == [streams.DISPATCH_REQUESTED, streams.DISPATCH_REQUESTED]


async def test_test_send_refuses_bad_lists_naming_the_recipient(stub: service_pb2_grpc.CampaignsServiceStub) -> None:
    created = await create(stub, campaign_message(programme_code()), "req-create")

    async def refused(request_id: str, profile_id: str, *recipients: service_pb2.TestRecipient) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.TestSendCampaign(
                service_pb2.TestSendCampaignRequest(
                    request_id=request_id,
                    campaign_key=created.campaign_key,
                    profile_id=profile_id,
                    recipients=list(recipients),
                )
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return error.value

    assert violation(await refused("r1", "p01")) == "recipients"
    assert violation(await refused("r2", "p01", *[service_pb2.TestRecipient(email_address="a@b.in")] * 21)) == (
        "recipients"
    )
    # An e-mail campaign and a phone number only: nothing to send it on.
    assert violation(await refused("r3", "p01", service_pb2.TestRecipient(phone_number="+919800000001"))) == (
        "recipients[0]"
    )
    assert violation(await refused("r4", "p01", service_pb2.TestRecipient(email_address="nobody"))) == (
        "recipients[0].email_address"
    )
    # p06 has no city, which the e-mail needs.
    error = await refused("r5", "p06", service_pb2.TestRecipient(email_address="qa@fundsy.example"))
    assert violation(error) == "profile_id" and "'city' is undefined" in (error.details() or "")
    assert not await all_outreaches(stub, created.campaign_key)

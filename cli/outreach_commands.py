"""`xsell lookup | explain | outreaches`: one outreach's record, why a person was or was not reached, a campaign's
outreaches with their message state."""

from typing import Any

import grpc

from cli.client import Gateway, Refused, status_of
from cli.commands import Out, campaign_key_of
from cli.output import as_dict, enum_word, money, print_json, stamp, table
from xsell.attribution.v1 import resources_pb2 as attribution_resources
from xsell.campaigns.v1 import resources_pb2 as campaign_resources
from xsell.campaigns.v1 import service_pb2 as campaigns_pb2
from xsell.channels.v1 import resources_pb2 as channel_resources
from xsell.channels.v1 import service_pb2 as channels_pb2
from xsell.gateway.v1 import service_pb2 as gateway_pb2
from xsell.type.v1 import channel_pb2

LIST_PAGE = 1000
NOT_HANDED_OVER = "-"
"""The message state of an outreach channels has no message for yet (held for quiet hours, paused, imminent)."""


def _channel(value: Any) -> str:
    return enum_word(channel_pb2.Channel.Name(value), "CHANNEL_").lower()


def _delivery_state(value: Any) -> str:
    return enum_word(channel_resources.DeliveryState.Name(value), "DELIVERY_STATE_")


def _step(entry: channel_resources.TimelineEntry) -> str:
    if entry.WhichOneof("step") == "engagement_kind":
        return enum_word(channel_resources.EngagementKind.Name(entry.engagement_kind), "ENGAGEMENT_KIND_").lower()
    return enum_word(channel_resources.DeliveryState.Name(entry.delivery_state), "DELIVERY_STATE_").lower()


def _outreach_notes(outreach: campaign_resources.Outreach) -> str:
    notes = []
    if outreach.test:
        notes.append("test send")
    if outreach.resend_of:
        notes.append(f"resend of {outreach.resend_of}")
    if outreach.fallback_of:
        notes.append(f"fallback of {outreach.fallback_of}")
    return ", ".join(notes)


def lookup_command(gateway: Gateway, args: Any, out: Out) -> None:
    try:
        record = gateway.call(
            gateway.gateway.LookupCampaignRecord,
            gateway_pb2.LookupCampaignRecordRequest(campaign_id=args.campaign_id),
        ).record
    except grpc.RpcError as error:
        if status_of(error)[0] == grpc.StatusCode.PERMISSION_DENIED:
            raise Refused(
                error,
                "  one outreach's whole record (LookupCampaignRecord) needs a key with crm.leads (or admin);",
                "  with outreach.read, `xsell explain <campaign> <profile_id>` says why one person was or was not"
                " reached",
            ) from None
        raise
    if out.json:
        print_json(record, out.out)
        return
    outreach, message, attribution = record.outreach, record.message, record.attribution
    print(args.campaign_id, file=out.out)
    offer = f"{outreach.offer.product_code} {money(outreach.offer.amount)}".strip()
    print(
        f"outreach    campaign {outreach.campaign_key}  profile {outreach.profile_id}"
        f"  channel {_channel(outreach.channel)}  trigger {outreach.trigger_code}",
        file=out.out,
    )
    notes = _outreach_notes(outreach)
    print(
        f"            offer {offer}  created {stamp(outreach, 'create_time')}  run {outreach.run_id or '-'}"
        + (f"  ({notes})" if notes else ""),
        file=out.out,
    )
    if record.HasField("message"):
        provider = f"  provider id {message.provider_message_id}" if message.provider_message_id else ""
        print(f"message     {_delivery_state(message.state)}{provider}", file=out.out)
        print(file=out.out)
        table(
            ("TIME", "STEP", "DETAIL"),
            [(stamp(entry, "occur_time"), _step(entry), entry.detail) for entry in message.timeline],
            out.out,
        )
    else:
        print(
            "message     none yet: not handed to channels (quiet hours, a paused campaign, or moments away);"
            f" `xsell explain {outreach.campaign_key} {outreach.profile_id}` says which",
            file=out.out,
        )
    print(file=out.out)
    if not record.HasField("attribution"):
        print("attribution nothing attributed yet", file=out.out)
        return
    _print_attribution(attribution, out)


def _print_attribution(attribution: attribution_resources.CampaignAttribution, out: Out) -> None:
    funnel = attribution.funnel
    steps = [(f.name, getattr(funnel, f.name)) for f in funnel.DESCRIPTOR.fields]
    print("funnel      " + ", ".join(f"{name} {count}" for name, count in steps), file=out.out)
    print(
        f"money       disbursed {money(attribution.disbursed_amount)}  lifetime revenue"
        f" {money(attribution.lifetime_revenue)}  year-1 revenue {money(attribution.year1_revenue)}"
        f"  cost {money(attribution.cost)}  ROMI {attribution.romi:.2f}",
        file=out.out,
    )
    if attribution.loans:
        print(file=out.out)
        table(
            ("LOAN", "PRODUCT", "STAGE", "SANCTIONED", "DISBURSED", "APPLIED"),
            [
                (
                    loan.loan_number,
                    loan.product_code,
                    enum_word(attribution_resources.LoanStage.Name(loan.stage), "LOAN_STAGE_"),
                    money(loan.sanctioned_amount),
                    money(loan.disbursed_amount),
                    stamp(loan, "apply_time"),
                )
                for loan in attribution.loans
            ],
            out.out,
        )
    if attribution.leads:
        print(file=out.out)
        table(
            ("LEAD", "CRM LEAD", "ORIGIN", "CREATED"),
            [
                (
                    lead.lead_id,
                    lead.crm_lead_id or "-",
                    enum_word(attribution_resources.LeadOrigin.Name(lead.origin), "LEAD_ORIGIN_").lower(),
                    stamp(lead, "create_time"),
                )
                for lead in attribution.leads
            ],
            out.out,
        )


def explain_command(gateway: Gateway, args: Any, out: Out) -> None:
    key = campaign_key_of(gateway, args.campaign)
    reply = gateway.call(
        gateway.campaigns.ExplainOutreach,
        campaigns_pb2.ExplainOutreachRequest(campaign_key=key, profile_id=args.profile_id, max_runs=args.runs),
    )
    if out.json:
        print_json(reply, out.out)
        return
    table(
        ("RUN", "OUTCOME", "CAMPAIGN ID", "CHANNEL", "REASON"),
        [
            (
                decision.run_id or "-",
                enum_word(campaigns_pb2.OutreachOutcome.Name(decision.outcome), "OUTREACH_OUTCOME_"),
                decision.campaign_id or "-",
                _channel(decision.channel) if decision.channel else "-",
                decision.reason,
            )
            for decision in reply.decisions
        ],
        out.out,
    )


def outreaches_command(gateway: Gateway, args: Any, out: Out) -> None:
    key = campaign_key_of(gateway, args.campaign)
    outreaches: list[campaign_resources.Outreach] = []
    token = ""
    while len(outreaches) < args.limit:
        reply = gateway.call(
            gateway.campaigns.ListOutreaches,
            campaigns_pb2.ListOutreachesRequest(
                campaign_key=key, page_size=min(LIST_PAGE, args.limit - len(outreaches)), page_token=token
            ),
        )
        outreaches += reply.outreaches
        token = reply.next_page_token
        if not token:
            break
    states = _message_states(gateway, outreaches, out)
    if out.json:
        print_json([as_dict(o) | {"message_state": states.get(o.campaign_id, "")} for o in outreaches], out.out)
        return
    table(
        ("CAMPAIGN ID", "PROFILE", "CHANNEL", "STATE", "RUN", "CREATED", "NOTE"),
        [
            (
                o.campaign_id,
                o.profile_id,
                _channel(o.channel),
                states.get(o.campaign_id, "?"),
                o.run_id or "-",
                stamp(o, "create_time"),
                _outreach_notes(o),
            )
            for o in outreaches
        ],
        out.out,
    )
    if token:
        print(f"(the first {len(outreaches)}; --limit shows more)", file=out.err)


def _message_states(gateway: Gateway, outreaches: list[campaign_resources.Outreach], out: Out) -> dict[str, str]:
    """Each outreach's message state from channels (GetMessage, asked at once for all): - when none exists yet."""
    futures = [
        (
            o.campaign_id,
            gateway.future(gateway.channels.GetMessage, channels_pb2.GetMessageRequest(campaign_id=o.campaign_id)),
        )
        for o in outreaches
    ]
    states: dict[str, str] = {}
    unreadable: set[str] = set()
    for campaign_id, future in futures:
        try:
            states[campaign_id] = _delivery_state(future.result().message.state)
        except grpc.RpcError as error:
            code = status_of(error)[0]
            if code == grpc.StatusCode.NOT_FOUND:
                states[campaign_id] = NOT_HANDED_OVER
            else:
                unreadable.add(code.name)
    if unreadable:
        print(
            f"note: some message states could not be read ({', '.join(sorted(unreadable))}); they show as ?;"
            " GetMessage needs outreach.read",
            file=out.err,
        )
    return states

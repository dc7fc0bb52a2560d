"""The `xsell segments|campaigns|status|report|trace` commands: one gateway call each, printed for a person."""

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
import yaml
from google.protobuf.message import Message

from cli.apply import list_campaigns, list_segments
from cli.client import CliError, Gateway, Refused, derived_request_id, random_request_id, status_of
from cli.output import as_dict, enum_word, print_json, stamp, table, waiting
from devstack.trace import render
from plumbing.telemetry import outreach_trace_id, spans_for_campaign_id
from services.segments.rule_files import SegmentFile, render_segment_text
from xsell.campaigns.v1 import resources_pb2 as campaign_resources
from xsell.campaigns.v1 import service_pb2 as campaigns_pb2
from xsell.segments.v1 import resources_pb2 as segment_resources
from xsell.segments.v1 import service_pb2 as segments_pb2
from xsell.type.v1 import channel_pb2


@dataclass
class Out:
    """Where and how to print: a table for people by default, JSON with --json."""

    json: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)


def _segment_state(segment: segment_resources.Segment) -> str:
    return enum_word(segment_resources.SegmentState.Name(segment.state), "SEGMENT_STATE_")


def _campaign_state(campaign: campaign_resources.Campaign) -> str:
    return enum_word(campaign_resources.CampaignState.Name(campaign.state), "CAMPAIGN_STATE_")


def _channel(value: Any) -> str:
    return enum_word(channel_pb2.Channel.Name(value), "CHANNEL_").lower()


APPROVER_KEY_COMMAND = "python -m gateway keys create --name approver --scopes approve"
"""How an approver's key is made (docs/gateway.md); it prints the key once."""


def _denied(error: grpc.RpcError) -> bool:
    return status_of(error)[0] == grpc.StatusCode.PERMISSION_DENIED


def _by_name_refused(error: grpc.RpcError, noun: str, ref: str, action: str | None) -> Refused:
    """Names are resolved with List*, which an approve-only (or reports, outreach) key may not call."""
    rpc, prefix, id_form = (
        ("ListSegments", "segments", "seg_...") if noun == "segment" else ("ListCampaigns", "campaigns", "cmp_...")
    )
    manage = f"{prefix}.manage"
    hints = [f"  this key may not list {prefix} ({rpc} needs {manage}), so it cannot find {ref!r} by its name;"]
    if action in ("approve", "reject"):
        hints += [
            f"  give the {noun}'s id and the version instead: xsell {prefix} {action} {id_form} --version N",
            f"  (`xsell {prefix} submit` printed both; `xsell {prefix} list` shows them with a {manage} key)",
        ]
    else:
        hints.append(f"  give the {noun}'s id ({id_form}) instead; `xsell {prefix} list` shows it with a {manage} key")
    return Refused(error, *hints)


def _version_refused(error: grpc.RpcError, noun: str, ref: str, action: str) -> Refused:
    """Without --version the CLI reads the current one, which an approve-only key may not."""
    prefix, rpc = ("segments", "GetSegment") if noun == "segment" else ("campaigns", "GetCampaign")
    return Refused(
        error,
        f"  this key may not read {prefix} ({rpc} needs {prefix}.manage), so it cannot find the current version;",
        f"  give it: xsell {prefix} {action} {ref} --version N",
    )


def _self_approval_refused(error: grpc.RpcError, noun: str, ref: str, version: int) -> Refused:
    prefix = f"{noun}s"
    return Refused(
        error,
        "  maker-checker: the key that wrote a version cannot approve it; another client's key with approve must.",
        "  Make one where the gateway runs (for `make run`: .venv/bin/python in its checkout); it prints the key once:",
        f"    {APPROVER_KEY_COMMAND}",
        f"  then: XSELL_API_KEY=xsk_... xsell {prefix} approve {ref} --version {version}",
    )


def _is_self_approval(error: grpc.RpcError) -> bool:
    code, details = status_of(error)
    return code == grpc.StatusCode.FAILED_PRECONDITION and "cannot approve" in details


def segment_id_of(gateway: Gateway, ref: str, action: str | None = None) -> str:
    """A segment id as given (seg_...), or the id of the one live segment with that display name."""
    if ref.startswith("seg_"):
        return ref
    try:
        segments = list_segments(gateway)
    except grpc.RpcError as error:
        if _denied(error):
            raise _by_name_refused(error, "segment", ref, action) from None
        raise
    named = [s for s in segments if s.display_name == ref and s.state != segment_resources.SEGMENT_STATE_ARCHIVED]
    if len(named) != 1:
        raise CliError(f"{len(named) or 'no'} segments are named {ref!r}; give the segment id (seg_...) instead")
    return str(named[0].segment_id)


def campaign_key_of(gateway: Gateway, ref: str, action: str | None = None) -> str:
    """A campaign key as given (cmp_...), or the key of the one campaign with that display name."""
    if ref.startswith("cmp_"):
        return ref
    try:
        campaigns = list_campaigns(gateway)
    except grpc.RpcError as error:
        if _denied(error):
            raise _by_name_refused(error, "campaign", ref, action) from None
        raise
    named = [c for c in campaigns if c.display_name == ref]
    if len(named) > 1:
        # A cancelled campaign keeps its name; the live one is meant.
        named = [c for c in named if c.state != campaign_resources.CAMPAIGN_STATE_CANCELLED]
    if len(named) != 1:
        raise CliError(f"{len(named) or 'no'} campaigns are named {ref!r}; give the campaign key (cmp_...) instead")
    return str(named[0].campaign_key)


def print_segments(segments: list[segment_resources.Segment], out: Out) -> None:
    if out.json:
        print_json(segments, out.out)
        return
    table(
        ("ID", "NAME", "STATE", "VERSION", "PUBLISHED", "MEMBERS"),
        [
            (s.segment_id, s.display_name, _segment_state(s), s.version, s.published_version or "-", s.member_count)
            for s in segments
        ],
        out.out,
    )


def print_campaigns(campaigns: list[campaign_resources.Campaign], out: Out) -> None:
    if out.json:
        print_json(campaigns, out.out)
        return
    table(
        ("KEY", "NAME", "STATE", "VERSION", "CHANNEL", "SEGMENT", "OUTREACHES"),
        [
            (
                c.campaign_key,
                c.display_name,
                _campaign_state(c),
                c.version,
                _channel(c.channel),
                c.segment_id,
                c.outreach_count,
            )
            for c in campaigns
        ],
        out.out,
    )


def print_segment(segment: segment_resources.Segment, out: Out) -> None:
    """`segments get`: the state, then the segment as a file `xsell apply` takes back (edit, apply)."""
    if out.json:
        print_json(segment, out.out)
        return
    print(
        f"# {segment.segment_id} {_segment_state(segment)} version {segment.version}"
        f" (published {segment.published_version or '-'}), {segment.member_count} members,"
        f" author {segment.author or '-'}, approver {segment.approver or '-'}",
        file=out.out,
    )
    print(render_segment_text(SegmentFile(segment.display_name, segment.description, segment.rule)), file=out.out)


def print_campaign(campaign: campaign_resources.Campaign, out: Out) -> None:
    """`campaigns get`: every set field, as YAML in the proto's field names."""
    if out.json:
        print_json(campaign, out.out)
        return
    print(yaml.safe_dump(as_dict(campaign), allow_unicode=True, sort_keys=False).rstrip(), file=out.out)


_SEGMENT_FROM: dict[str, frozenset[int]] = {
    # The states each step starts from: a step answered from another state was answered by the service's memory
    # of the same request_id (a replay), not done again.
    "submit": frozenset({segment_resources.SEGMENT_STATE_DRAFT}),
    "approve": frozenset({segment_resources.SEGMENT_STATE_SUBMITTED}),
    "reject": frozenset({segment_resources.SEGMENT_STATE_SUBMITTED}),
    "publish": frozenset(
        {
            segment_resources.SEGMENT_STATE_DRAFT,
            segment_resources.SEGMENT_STATE_SUBMITTED,
            segment_resources.SEGMENT_STATE_APPROVED,
        }
    ),
}


def segments_command(gateway: Gateway, args: Any, out: Out) -> None:
    api = gateway.segments
    if args.action == "list":
        print_segments(list_segments(gateway), out)
        return
    segment_id = segment_id_of(gateway, args.segment, args.action)
    version = getattr(args, "version", None)
    before: segment_resources.Segment | None = None
    # An approver's key may hold only `approve`: with an id and --version nothing needs reading first.
    if args.action in ("get", "publish") or not version:
        try:
            before = gateway.call(api.GetSegment, segments_pb2.GetSegmentRequest(segment_id=segment_id)).segment
        except grpc.RpcError as error:
            if _denied(error) and args.action in ("approve", "reject"):
                raise _version_refused(error, "segment", segment_id, args.action) from None
            raise
        if args.action == "get":
            print_segment(before, out)
            return
        version = version or before.version
    request_id = args.request_id or derived_request_id(f"segment-{args.action}", segment_id, version)
    if args.action == "submit":
        reply = gateway.call(
            api.SubmitSegment,
            segments_pb2.SubmitSegmentRequest(request_id=request_id, segment_id=segment_id, version=version),
        )
    elif args.action == "approve":
        try:
            reply = gateway.call(
                api.ApproveSegment,
                segments_pb2.ApproveSegmentRequest(
                    request_id=request_id, segment_id=segment_id, version=version, note=args.note or ""
                ),
            )
        except grpc.RpcError as error:
            if _is_self_approval(error):
                raise _self_approval_refused(error, "segment", segment_id, version) from None
            raise
    elif args.action == "reject":
        reply = gateway.call(
            api.RejectSegment,
            segments_pb2.RejectSegmentRequest(
                request_id=request_id, segment_id=segment_id, version=version, reason=args.reason
            ),
        )
    elif args.action == "publish":
        future = gateway.future(
            api.PublishSegment,
            segments_pb2.PublishSegmentRequest(request_id=request_id, segment_id=segment_id),
            timeout=args.publish_timeout,
        )
        reply = waiting(future, f"publishing {segment_id} v{version}", out.err)
    else:
        raise CliError(f"unknown segments action {args.action!r}")
    segment = reply.segment
    if before is not None and before.state not in _SEGMENT_FROM[args.action]:
        segment = gateway.call(api.GetSegment, segments_pb2.GetSegmentRequest(segment_id=segment_id)).segment
        print(_replayed(args.action, request_id, f"segment {segment_id}", _segment_state(segment)), file=out.err)
    if out.json:
        print_json(segment, out.out)
    else:
        print(
            f"{segment.segment_id} {_segment_state(segment)} version {segment.version} members {segment.member_count}",
            file=out.out,
        )
    if args.action == "submit":
        print(_approve_next("segments", segment.segment_id, segment.version), file=out.err)


def _replayed(action: str, request_id: str, what: str, state: str) -> str:
    return (
        f"replayed: the service answered with its answer to the first {action} with this request id ({request_id});"
        f" {what} is now {state}"
    )


def _approve_next(prefix: str, ref: str, version: int) -> str:
    return (
        "next: another client's key approves it:"
        f" XSELL_API_KEY=<approver key> xsell {prefix} approve {ref} --version {version}"
    )


_CAMPAIGN_STEPS: dict[str, tuple[str, Callable[..., Message], bool]] = {
    # action: (rpc, request type, request_id derived from the version, so repeating it is a no-op)
    "submit": ("SubmitCampaign", campaigns_pb2.SubmitCampaignRequest, True),
    "approve": ("ApproveCampaign", campaigns_pb2.ApproveCampaignRequest, True),
    "reject": ("RejectCampaign", campaigns_pb2.RejectCampaignRequest, True),
    "launch": ("LaunchCampaign", campaigns_pb2.LaunchCampaignRequest, True),
    # A campaign may be paused and resumed many times: each invocation is its own request.
    "pause": ("PauseCampaign", campaigns_pb2.PauseCampaignRequest, False),
    "resume": ("ResumeCampaign", campaigns_pb2.ResumeCampaignRequest, False),
    "cancel": ("CancelCampaign", campaigns_pb2.CancelCampaignRequest, True),
}


_CAMPAIGN_FROM: dict[str, frozenset[int]] = {
    # As _SEGMENT_FROM: the states each step starts from (launch: DRAFT too where approval is off).
    "submit": frozenset({campaign_resources.CAMPAIGN_STATE_DRAFT}),
    "approve": frozenset({campaign_resources.CAMPAIGN_STATE_SUBMITTED}),
    "reject": frozenset({campaign_resources.CAMPAIGN_STATE_SUBMITTED}),
    "launch": frozenset({campaign_resources.CAMPAIGN_STATE_APPROVED, campaign_resources.CAMPAIGN_STATE_DRAFT}),
    "pause": frozenset({campaign_resources.CAMPAIGN_STATE_SCHEDULED, campaign_resources.CAMPAIGN_STATE_RUNNING}),
    "resume": frozenset({campaign_resources.CAMPAIGN_STATE_PAUSED}),
    "cancel": frozenset(
        set(campaign_resources.CampaignState.values())
        - {campaign_resources.CAMPAIGN_STATE_COMPLETED, campaign_resources.CAMPAIGN_STATE_CANCELLED}
    ),
}


def campaigns_command(gateway: Gateway, args: Any, out: Out) -> None:
    api = gateway.campaigns
    if args.action == "list":
        print_campaigns(list_campaigns(gateway), out)
        return
    key = campaign_key_of(gateway, args.campaign, args.action)
    version = getattr(args, "version", None)
    before: campaign_resources.Campaign | None = None
    if not version:
        try:
            before = gateway.call(api.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_key=key)).campaign
        except grpc.RpcError as error:
            if _denied(error) and args.action in ("approve", "reject"):
                raise _version_refused(error, "campaign", key, args.action) from None
            raise
        if args.action == "get":
            print_campaign(before, out)
            return
        version = before.version
    rpc, request_type, by_version = _CAMPAIGN_STEPS[args.action]
    fields: dict[str, Any] = {"campaign_key": key}
    names = request_type.DESCRIPTOR.fields_by_name  # type: ignore[attr-defined]
    if "version" in names:
        fields["version"] = version
    if "note" in names and getattr(args, "note", None):
        fields["note"] = args.note
    if "reason" in names and getattr(args, "reason", None):
        fields["reason"] = args.reason
    fields["request_id"] = args.request_id or (
        derived_request_id(f"campaign-{args.action}", key, version) if by_version else random_request_id(args.action)
    )
    try:
        campaign = gateway.call(getattr(api, rpc), request_type(**fields)).campaign
    except grpc.RpcError as error:
        if args.action == "approve" and _is_self_approval(error):
            raise _self_approval_refused(error, "campaign", key, version) from None
        raise
    if before is not None and before.state not in _CAMPAIGN_FROM[args.action]:
        # Launching a COMPLETED campaign again answers RUNNING, its first launch's answer: say what it is now.
        campaign = gateway.call(api.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_key=key)).campaign
        print(_replayed(args.action, fields["request_id"], f"campaign {key}", _campaign_state(campaign)), file=out.err)
    if out.json:
        print_json(campaign, out.out)
    else:
        reason = f" ({campaign.pause_reason})" if campaign.pause_reason else ""
        print(f"{campaign.campaign_key} {_campaign_state(campaign)} version {campaign.version}{reason}", file=out.out)
    if args.action == "submit":
        print(_approve_next("campaigns", campaign.campaign_key, campaign.version), file=out.err)


def status_command(gateway: Gateway, args: Any, out: Out) -> None:
    key = campaign_key_of(gateway, args.campaign)
    campaign = gateway.call(gateway.campaigns.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_key=key)).campaign
    runs = gateway.call(
        gateway.campaigns.ListCampaignRuns, campaigns_pb2.ListCampaignRunsRequest(campaign_key=key, page_size=args.runs)
    ).runs
    if out.json:
        print_json({"campaign": as_dict(campaign), "runs": [as_dict(run) for run in runs]}, out.out)
        return
    print(f"{campaign.campaign_key}  {campaign.display_name}", file=out.out)
    print(
        f"state       {_campaign_state(campaign)}{'  ' + campaign.pause_reason if campaign.pause_reason else ''}",
        file=out.out,
    )
    print(
        f"version     {campaign.version} (author {campaign.author or '-'}, approver {campaign.approver or '-'})",
        file=out.out,
    )
    print(
        f"segment     {campaign.segment_id} v{campaign.segment_version}  channel {_channel(campaign.channel)}",
        file=out.out,
    )
    print(f"outreaches  {campaign.outreach_count}  launched {stamp(campaign, 'launch_time')}", file=out.out)
    if runs:
        print(file=out.out)
        table(
            ("RUN", "OCCURRENCE", "AUDIENCE", "HELD OUT", "RELEASED", "DISPATCHED", "DELIVERED", "COMPLETED"),
            [
                (
                    run.run_id,
                    stamp(run, "occurrence_time"),
                    run.counts.audience,
                    run.counts.held_out,
                    run.counts.released,
                    run.counts.dispatched,
                    run.counts.delivered,
                    stamp(run, "complete_time"),
                )
                for run in runs
            ],
            out.out,
        )
    for line in undispatched_hint(campaign, runs, args.campaign):
        print(line, file=out.out)


def undispatched_hint(
    campaign: campaign_resources.Campaign, runs: Any, ref: str, now: datetime | None = None
) -> list[str]:
    """Why released outreaches are not dispatched yet, as far as the campaign says; where to look for one person."""
    waiting_count = sum(max(run.counts.released - run.counts.dispatched, 0) for run in runs)
    if not waiting_count or campaign.state == campaign_resources.CAMPAIGN_STATE_CANCELLED:
        return []
    quoted = f'"{ref}"' if " " in ref else ref
    lines = [f"\n{waiting_count} released outreaches are not dispatched yet:"]
    if campaign.state == campaign_resources.CAMPAIGN_STATE_PAUSED:
        lines.append(f"  the campaign is PAUSED; `xsell campaigns resume {quoted}` sends them")
    elif campaign.HasField("quiet_hours") and campaign.quiet_hours.start != campaign.quiet_hours.end:
        lines.append(_quiet_hours_line(campaign, now or datetime.now(UTC)))
    else:
        lines.append("  they are on their way to channels (dispatch follows release within moments)")
    lines.append(f"  `xsell outreaches {quoted}` lists them with their message state;")
    lines.append(f"  `xsell explain {quoted} <profile_id>` says why for one person")
    return lines


def _quiet_hours_line(campaign: campaign_resources.Campaign, now: datetime) -> str:
    start, end = campaign.quiet_hours.start, campaign.quiet_hours.end
    zone_name = campaign.schedule.time_zone or "UTC"
    line = f"  quiet hours {start}-{end} (each recipient's local time) hold them until they end"
    try:
        local = now.astimezone(ZoneInfo(zone_name))
        start_minute, end_minute = (int(t[:2]) * 60 + int(t[3:5]) for t in (start, end))
    except (ZoneInfoNotFoundError, ValueError):
        return line
    minute = local.hour * 60 + local.minute
    inside = (
        start_minute <= minute < end_minute
        if start_minute < end_minute
        else (minute >= start_minute or minute < end_minute)
    )
    where = "inside" if inside else "outside"
    return f"{line}; in {zone_name} it is {local:%H:%M} now, {where} them"


def report_command(gateway: Gateway, args: Any, out: Out) -> int:
    key = campaign_key_of(gateway, args.campaign)
    try:
        report = gateway.call(
            gateway.campaigns.GetCampaignReport, campaigns_pb2.GetCampaignReportRequest(campaign_key=key)
        )
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
            raise
        print(
            "error: UNIMPLEMENTED: this deployment's campaigns service does not serve GetCampaignReport yet; "
            f"`xsell status {args.campaign}` shows the per-run counts",
            file=out.err,
        )
        return 3
    if out.json:
        print_json(report, out.out)
        return 0
    counts = report.counts
    rows = [(f.name, getattr(counts, f.name)) for f in counts.DESCRIPTOR.fields if not f.is_repeated]
    table(("COUNT", "VALUE"), rows, out.out)
    for title, reasons in (
        ("suppressed", counts.suppressed_by_reason),
        ("not eligible", counts.not_eligible_by_reason),
        ("capped", counts.capped_by_reason),
        ("no resend", counts.resends_skipped_by_reason),
        ("no fallback", counts.fallbacks_skipped_by_reason),
    ):
        for reason in reasons:
            print(f"  {title}: {reason.reason} {reason.count}", file=out.out)
    return 0


def trace_command(args: Any, out: Out) -> int:
    trace_id = outreach_trace_id(args.campaign_id)
    if args.trace_id:
        print(trace_id, file=out.out)
        return 0
    spans = spans_for_campaign_id(Path(args.var_dir), args.campaign_id)
    if not spans:
        print(f"error: no spans for {args.campaign_id} in {args.var_dir}/traces/ (trace id {trace_id})", file=out.err)
        return 1
    if out.json:
        print_json(spans, out.out)
        return 0
    services = sorted({span["service"] for span in spans})
    print(f"trace {trace_id}  {len(spans)} spans  services: {', '.join(services)}", file=out.out)
    print("\n".join(render(spans)), file=out.out)
    return 0

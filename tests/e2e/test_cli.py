"""`xsell` as an operator runs it, in a subprocess against the running stack's gateway: apply, approve, launch, read."""

import asyncio
import json
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
import yaml

from plumbing.telemetry import outreach_trace_id
from tests.e2e.conftest import E2E_API_KEY, ROOT, RunningStack, ok, xsell
from tests.waiting import eventually
from xsell.attribution.v1 import service_pb2 as attribution_pb2
from xsell.attribution.v1 import service_pb2_grpc as attribution_grpc

# One worker runs every e2e test, so `make test` starts the whole stack once, not once per worker.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("stack")]

SEGMENT_EXAMPLE = ROOT / "examples" / "segments" / "sip_only_investors.yaml"
KEYS_CREATE = (sys.executable, "-m", "gateway", "keys", "create")
CAMPAIGN_EXAMPLE = ROOT / "examples" / "campaigns" / "lumpsum_for_sip_investors.yaml"


def approver_key(stack: RunningStack) -> str:
    created = subprocess.run(
        [*KEYS_CREATE, "--name", "cli-approver", "--scopes", "approve"],
        env=stack.stack._env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return created.stdout.strip()


def example_files(tmp_path: Path) -> tuple[Path, Path, str, str]:
    """The example segment and campaign, renamed so this test owns them in the shared stack."""
    suffix = uuid.uuid4().hex[:6]
    segment = yaml.safe_load(SEGMENT_EXAMPLE.read_text())
    segment["name"] = f"{segment['name']} {suffix}"
    campaign = yaml.safe_load(CAMPAIGN_EXAMPLE.read_text())
    assert campaign["segment"] == yaml.safe_load(SEGMENT_EXAMPLE.read_text())["name"]
    campaign["segment"] = segment["name"]
    campaign["display_name"] = f"{campaign['display_name']} {suffix}"
    # Far enough ahead that the campaign stays SCHEDULED while the test pauses and resumes it.
    campaign["schedule"]["send_time"] = "2099-01-01T09:00:00+05:30"
    (tmp_path / "segments").mkdir()
    (tmp_path / "campaigns").mkdir()
    segment_path = tmp_path / "segments" / "sip.yaml"
    campaign_path = tmp_path / "campaigns" / "lumpsum.yaml"
    segment_path.write_text(yaml.safe_dump(segment, allow_unicode=True))
    campaign_path.write_text(yaml.safe_dump(campaign, allow_unicode=True))
    return segment_path, campaign_path, segment["name"], campaign["display_name"]


def test_apply_approve_publish_launch_pause_and_read_back(running_stack: RunningStack, tmp_path: Path) -> None:
    segment_path, campaign_path, segment_name, campaign_name = example_files(tmp_path)
    approver = approver_key(running_stack)

    dry = ok(xsell(running_stack, "apply", str(tmp_path), "--dry-run", "--json"))
    assert [(r["kind"], r["action"]) for r in dry] == [("segment", "would create"), ("campaign", "would create")]
    applied = xsell(running_stack, "apply", str(segment_path))
    assert "created" in ok(applied) and segment_name not in applied.stdout  # the table shows the path and id
    assert "[1/1]" in applied.stderr, applied.stderr
    again = ok(xsell(running_stack, "apply", str(segment_path), "--json"))
    assert [(r["kind"], r["action"], r["version"]) for r in again] == [("segment", "unchanged", 1)]
    segment_id = again[0]["id"]
    # `get` prints the segment as a file: applying what it printed changes nothing.
    printed = ok(xsell(running_stack, "segments", "get", segment_id))
    assert printed.startswith(f"# {segment_id} DRAFT version 1"), printed
    round_trip = tmp_path / "round-trip.yaml"
    round_trip.write_text(printed)
    assert [r["action"] for r in ok(xsell(running_stack, "apply", str(round_trip), "--json"))] == ["unchanged"]
    round_trip.unlink()

    # A campaign cannot target a segment that is not published: the service's status and message come through.
    too_early = xsell(running_stack, "apply", str(campaign_path))
    assert too_early.returncode == 1
    assert "FAILED_PRECONDITION" in too_early.stderr and segment_id in too_early.stderr, too_early.stderr

    assert ok(xsell(running_stack, "segments", "submit", segment_name, "--json"))["state"] == "SEGMENT_STATE_SUBMITTED"
    self_approval = xsell(running_stack, "segments", "approve", segment_id)
    assert self_approval.returncode == 1 and "FAILED_PRECONDITION" in self_approval.stderr, self_approval.stderr
    approved = ok(xsell(running_stack, "segments", "approve", segment_id, "--version", "1", "--json", key=approver))
    assert approved["state"] == "SEGMENT_STATE_APPROVED"
    published = xsell(running_stack, "segments", "publish", segment_name, "--json")
    assert ok(published)["state"] == "SEGMENT_STATE_PUBLISHED"
    assert f"publishing {segment_id} v1" in published.stderr

    created = ok(xsell(running_stack, "apply", str(tmp_path), "--json"))
    assert [(r["kind"], r["action"]) for r in created] == [("segment", "unchanged"), ("campaign", "created")]
    campaign_key = created[1]["id"]
    assert [r["action"] for r in ok(xsell(running_stack, "apply", str(tmp_path), "--json"))] == ["unchanged"] * 2

    changed = yaml.safe_load(campaign_path.read_text())
    changed["priority"] = 7
    campaign_path.write_text(yaml.safe_dump(changed, allow_unicode=True))
    dry = ok(xsell(running_stack, "apply", str(tmp_path), "--dry-run", "--json"))
    assert [(r["action"], r["version"]) for r in dry] == [("unchanged", 1), ("would update", 1)]
    updated = ok(xsell(running_stack, "apply", str(campaign_path), "--json"))
    assert [(r["id"], r["action"], r["version"]) for r in updated] == [(campaign_key, "updated", 2)]
    got = ok(xsell(running_stack, "campaigns", "get", campaign_key, "--json"))
    assert (got["priority"], got["segment_id"], got["channel"]) == (7, segment_id, "CHANNEL_EMAIL")
    assert "priority: 7\n" in ok(xsell(running_stack, "campaigns", "get", campaign_name))

    listed = ok(xsell(running_stack, "campaigns", "list"))
    row = next(line for line in listed.splitlines() if line.startswith(campaign_key))
    assert "DRAFT" in row and campaign_name in row
    assert listed.splitlines()[0].split()[:3] == ["KEY", "NAME", "STATE"]

    ok(xsell(running_stack, "campaigns", "submit", campaign_name))
    ok(xsell(running_stack, "campaigns", "approve", campaign_key, "--version", "2", key=approver))
    assert (
        ok(xsell(running_stack, "campaigns", "launch", campaign_name, "--json"))["state"] == "CAMPAIGN_STATE_SCHEDULED"
    )
    # Launch's request id derives from the version: running it again is answered, not refused.
    assert (
        ok(xsell(running_stack, "campaigns", "launch", campaign_key, "--json"))["state"] == "CAMPAIGN_STATE_SCHEDULED"
    )
    paused = ok(xsell(running_stack, "campaigns", "pause", campaign_key, "--reason", "creative review", "--json"))
    assert paused["state"] == "CAMPAIGN_STATE_PAUSED"
    assert "SCHEDULED" in ok(xsell(running_stack, "campaigns", "resume", campaign_key))

    status = ok(xsell(running_stack, "status", campaign_name))
    assert campaign_key in status and "SCHEDULED" in status and "approver cli-approver" in status, status
    report = ok(xsell(running_stack, "report", campaign_key, "--json"))
    assert report["campaign_key"] == campaign_key
    assert "audience" in ok(xsell(running_stack, "report", campaign_key))

    assert "CANCELLED" in ok(xsell(running_stack, "campaigns", "cancel", campaign_key, "--reason", "done"))
    refused = xsell(running_stack, "campaigns", "pause", campaign_key)
    assert refused.returncode == 1 and refused.stderr.startswith("error: FAILED_PRECONDITION: "), refused.stderr

    # A cancelled campaign is final: applying its file again starts a new one, and its name now means the new one.
    (recreated,) = ok(xsell(running_stack, "apply", str(campaign_path), "--json"))
    assert recreated["action"] == "created" and recreated["id"] != campaign_key
    assert ok(xsell(running_stack, "campaigns", "get", campaign_name, "--json"))["campaign_key"] == recreated["id"]


def test_bad_files_apply_nothing_and_name_the_field(running_stack: RunningStack, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(f"name: never applied {uuid.uuid4().hex[:6]}\nrule: {{event: {{name: x, performed: true}}}}\n")
    bad_campaign = tmp_path / "bad.yaml"
    bad_campaign.write_text("display_name: Broken\nsegment: whatever\nchanel: email\n")
    bad_segment = tmp_path / "bad-segment.yaml"
    bad_segment.write_text("name: Broken\nrule: {event: {name: x, performed: true, in_last: 3 weeks}}\n")
    before = ok(xsell(running_stack, "segments", "list", "--json"))

    result = xsell(running_stack, "apply", str(tmp_path))
    assert result.returncode == 2
    assert f"{bad_campaign}: chanel: unknown field 'chanel'; did you mean 'channel'?" in result.stderr, result.stderr
    assert f"{bad_segment}: rule.event.in_last" in result.stderr, result.stderr
    assert ok(xsell(running_stack, "segments", "list", "--json")) == before

    missing = tmp_path / "missing-segment"
    missing.mkdir()
    (missing / "c.yaml").write_text("display_name: Orphan\nsegment: no such segment anywhere\nchannel: email\n")
    orphan = xsell(running_stack, "apply", str(missing))
    assert orphan.returncode == 2 and "no segment is named 'no such segment anywhere'" in orphan.stderr


def gateway_metrics(stack: RunningStack) -> str:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{stack.stack.ports.metrics['gateway']}/metrics", timeout=10
    ) as reply:
        return str(reply.read().decode())


def refused_count(metrics: str, reason: str, client: str) -> float:
    for labels, value in re.findall(r"^xsell_gateway_refused_total\{([^}]*)\} (\S+)$", metrics, re.MULTILINE):
        if f'reason="{reason}"' in labels and f'client="{client}"' in labels:
            return float(value)
    return 0.0


def test_a_wrong_key_prints_the_status_and_exits_non_zero(running_stack: RunningStack) -> None:
    before = refused_count(gateway_metrics(running_stack), "unauthenticated", "")
    result = xsell(running_stack, "campaigns", "list", key="xsk_nobody_" + "s" * 40)
    assert result.returncode == 1
    assert result.stderr.startswith("error: UNAUTHENTICATED: the API key is not valid"), result.stderr
    assert "XSELL_API_KEY" in result.stderr
    assert refused_count(gateway_metrics(running_stack), "unauthenticated", "") == before + 1


def test_a_key_over_its_rate_limit_is_told_when_to_retry(running_stack: RunningStack) -> None:
    client = f"cli-throttled-{uuid.uuid4().hex[:6]}"
    created = subprocess.run(
        [*KEYS_CREATE, "--name", client, "--scopes", "campaigns.manage", "--rate", "0.01", "--burst", "1"],
        env=running_stack.stack._env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    key = created.stdout.strip()
    ok(xsell(running_stack, "campaigns", "list", key=key))
    throttled = xsell(running_stack, "campaigns", "list", key=key)
    assert throttled.returncode == 1
    lines = throttled.stderr.splitlines()
    assert lines[0].startswith(f"error: RESOURCE_EXHAUSTED: API key {key.split('_')[1]} is over its rate limit"), lines
    assert re.fullmatch(r"  retry in \d+\.\d\ds", lines[1]), lines
    assert refused_count(gateway_metrics(running_stack), "rate_limited", client) == 1


async def test_trace_prints_the_gateway_span_of_a_campaign_id(running_stack: RunningStack) -> None:
    campaign_id = f"CSELL-NOV-T06-{uuid.uuid4().int % 10**8:08d}"
    async with grpc.aio.insecure_channel(running_stack.stack.gateway_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await attribution_grpc.AttributionServiceStub(channel).GetCampaignAttribution(
                attribution_pb2.GetCampaignAttributionRequest(campaign_id=campaign_id),
                metadata=[("x-api-key", E2E_API_KEY)],
                timeout=10,
            )
    var_dir = str(running_stack.var_dir)
    assert ok(xsell(running_stack, "trace", campaign_id, "--trace-id")).strip() == outreach_trace_id(campaign_id)

    async def traced() -> bool:
        result = await asyncio.to_thread(xsell, running_stack, "trace", campaign_id, "--var-dir", var_dir)
        return result.returncode == 0 and "[gateway] gateway GetCampaignAttribution" in result.stdout

    assert await eventually(traced, timeout=30, interval=0.5)
    unknown = xsell(running_stack, "trace", "CSELL-NOV-T06-00000000", "--var-dir", var_dir)
    assert unknown.returncode == 1 and "no spans for CSELL-NOV-T06-00000000" in unknown.stderr


async def test_load_people_then_launch_and_follow_one_campaign_id(running_stack: RunningStack, tmp_path: Path) -> None:
    """A new operator's first run: people from a file, maker-checker with an approver's key, a campaign sent now,
    its outreaches, one campaign ID's record, why a person was reached, and a launch repeated after the end."""
    suffix = uuid.uuid4().hex[:6]
    tier = f"cli-{suffix}"  # no other test's segment selects these people
    people = tmp_path / "people.jsonl"
    people.write_text(
        "".join(
            json.dumps({"profile_id": f"cli-{suffix}-{n}", "attributes": attributes}) + "\n"
            for n, attributes in enumerate(
                [
                    {"first_name": "Asha", "email": f"asha.{suffix}@example.in", "customer_tier": tier},
                    {"first_name": "Ravi", "email": f"ravi.{suffix}@example.in", "customer_tier": tier},
                    {"first_name": "Dev", "customer_tier": tier, "favourite_colour": "teal"},
                ]
            )
        )
    )
    loaded = xsell(running_stack, "profiles", "load", str(people))
    assert loaded.returncode == 1, loaded.stderr
    assert loaded.stdout.splitlines()[1].split() == [str(people), "3", "2", "1"]
    assert f"{people}:3: cli-{suffix}-2: attributes.favourite_colour: " in loaded.stderr

    segment_path = tmp_path / "tier.yaml"
    segment_name = f"CLI tier {suffix}"
    segment_path.write_text(
        yaml.safe_dump({"name": segment_name, "rule": {"attribute": {"name": "customer_tier", "equals": tier}}})
    )
    (segment,) = ok(xsell(running_stack, "apply", str(segment_path), "--json"))
    submitted = xsell(running_stack, "segments", "submit", segment_name)
    assert f"xsell segments approve {segment['id']} --version 1" in ok(submitted) + submitted.stderr
    approver = approver_key(running_stack)
    by_name = xsell(running_stack, "segments", "approve", segment_name, key=approver)
    assert by_name.returncode == 1 and "--version N" in by_name.stderr, by_name.stderr
    ok(xsell(running_stack, "segments", "approve", segment["id"], "--version", "1", key=approver))
    assert ok(xsell(running_stack, "--json", "segments", "publish", segment_name))["member_count"] == "2"

    campaign = yaml.safe_load(CAMPAIGN_EXAMPLE.read_text())
    campaign_name = f"{campaign['display_name']} {suffix}"
    campaign.update(segment=segment_name, display_name=campaign_name)
    for sends_later in ("quiet_hours", "distribution", "holdout_basis_points"):
        campaign.pop(sends_later)
    campaign_path = tmp_path / "now.yaml"
    campaign_path.write_text(yaml.safe_dump(campaign, allow_unicode=True))
    (created,) = ok(xsell(running_stack, "apply", str(campaign_path), "--json"))
    ok(xsell(running_stack, "campaigns", "submit", campaign_name))
    ok(xsell(running_stack, "campaigns", "approve", created["id"], "--version", "1", key=approver))
    ok(xsell(running_stack, "campaigns", "launch", campaign_name))

    # The SMTP server accepts the e-mails (SENT); this stack's has no delivery reports to make them DELIVERED.
    async def sent() -> list[dict[str, object]]:
        result = await asyncio.to_thread(xsell, running_stack, "outreaches", campaign_name, "--json")
        rows = ok(result)
        return rows if len(rows) == 2 and all(row["message_state"] in ("SENT", "DELIVERED") for row in rows) else []

    outreaches = await eventually(sent, timeout=60, interval=0.5)
    campaign_id = str(outreaches[0]["campaign_id"])
    profile_id = str(outreaches[0]["profile_id"])
    record = ok(xsell(running_stack, "lookup", campaign_id))
    assert record.startswith(f"{campaign_id}\n") and re.search(r"^message     (SENT|DELIVERED)", record, re.M), record
    assert re.search(r"^TIME +STEP +DETAIL$", record, re.M), "the message's timeline follows"
    assert f"profile {profile_id}  channel email" in record
    assert ok(xsell(running_stack, "--json", "lookup", campaign_id))["outreach"]["campaign_id"] == campaign_id
    explained = ok(xsell(running_stack, "explain", campaign_name, profile_id))
    assert campaign_id in explained and re.search(r"DISPATCHED|DELIVERED", explained), explained

    async def completed() -> bool:
        status = await asyncio.to_thread(xsell, running_stack, "--json", "status", campaign_name)
        return bool(ok(status)["campaign"]["state"] == "CAMPAIGN_STATE_COMPLETED")

    await eventually(completed, timeout=60, interval=0.5)
    again = xsell(running_stack, "campaigns", "launch", campaign_name)
    assert ok(again).split()[1] == "COMPLETED"
    assert again.stderr.startswith("replayed: ") and "is now COMPLETED" in again.stderr, again.stderr

"""The command line: connection flags before or after the command, and the status hint for undispatched outreaches."""

from datetime import UTC, datetime

import pytest

from cli.__main__ import parser
from cli.commands import undispatched_hint
from xsell.campaigns.v1 import resources_pb2 as r


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--gateway", "gw:1", "--api-key", "xsk_a_b", "status", "cmp_1"],
        ["status", "cmp_1", "--json", "--gateway", "gw:1", "--api-key", "xsk_a_b"],
        ["--gateway", "gw:9", "status", "cmp_1", "--json", "--gateway", "gw:1", "--api-key", "xsk_a_b"],
    ],
)
def test_connection_flags_work_before_and_after_the_command(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    assert (args.json, args.gateway, args.api_key, args.campaign) == (True, "gw:1", "xsk_a_b", "cmp_1")


def test_without_flags_the_defaults_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XSELL_GATEWAY", "env:50051")
    args = parser().parse_args(["segments", "list"])
    assert (args.json, args.gateway, args.api_key, args.timeout) == (False, "env:50051", None, 30.0)
    assert parser().parse_args(["--json", "trace", "CSELL-NOV-T06-0884"]).json is True


def test_help_lists_the_connection_flags() -> None:
    text = parser().format_help()
    assert all(flag in text for flag in ("--gateway", "--api-key", "--json", "--timeout"))


def _run(released: int, dispatched: int) -> r.CampaignRun:
    return r.CampaignRun(run_id="run_1", counts=r.ReportCounts(released=released, dispatched=dispatched))


def test_status_says_why_released_outreaches_wait() -> None:
    campaign = r.Campaign(
        state=r.CAMPAIGN_STATE_RUNNING,
        quiet_hours=r.QuietHours(start="21:00", end="09:00"),
        schedule=r.Schedule(time_zone="Asia/Kolkata"),
    )
    late_evening = datetime(2026, 11, 26, 17, 40, tzinfo=UTC)  # 23:10 in Kolkata
    lines = undispatched_hint(campaign, [_run(3, 0)], "Lumpsum for SIP", late_evening)
    assert lines[0] == "\n3 released outreaches are not dispatched yet:"
    assert lines[1] == (
        "  quiet hours 21:00-09:00 (each recipient's local time) hold them until they end;"
        " in Asia/Kolkata it is 23:10 now, inside them"
    )
    assert lines[2:] == [
        '  `xsell outreaches "Lumpsum for SIP"` lists them with their message state;',
        '  `xsell explain "Lumpsum for SIP" <profile_id>` says why for one person',
    ]
    paused = r.Campaign(state=r.CAMPAIGN_STATE_PAUSED)
    assert "`xsell campaigns resume cmp_1` sends them" in undispatched_hint(paused, [_run(2, 1)], "cmp_1")[1]
    assert undispatched_hint(campaign, [_run(3, 3)], "cmp_1") == []
    assert undispatched_hint(r.Campaign(state=r.CAMPAIGN_STATE_CANCELLED), [_run(3, 0)], "cmp_1") == []

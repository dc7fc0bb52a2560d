"""What `xsell status` says about released outreaches that are not dispatched yet."""

from datetime import UTC, datetime

from cli.commands import undispatched_hint
from xsell.campaigns.v1 import resources_pb2 as r


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

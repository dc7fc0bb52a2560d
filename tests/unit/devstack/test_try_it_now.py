"""The campaigns the README's first walkthrough launches send at once, at any hour, to everyone in the segment."""

from pathlib import Path

import pytest

from cli.campaign_files import load_campaign_file

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "campaigns"


@pytest.mark.parametrize("name", ["try_it_now.yaml", "try_it_now_whatsapp.yaml"])
def test_nothing_holds_a_try_it_now_campaigns_messages_back(name: str) -> None:
    loaded = load_campaign_file(EXAMPLES / name)
    campaign = loaded.campaign
    assert loaded.segment_name == "SIP-only investors"
    assert not campaign.HasField("quiet_hours") and not campaign.HasField("distribution")
    assert not campaign.schedule.HasField("send_time") and not campaign.schedule.HasField("recurrence")
    assert campaign.holdout_basis_points == 0 and not campaign.frequency_caps

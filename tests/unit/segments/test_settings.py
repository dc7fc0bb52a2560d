"""Settings defaults and the XSELL_SEGMENTS_ environment prefix."""

import pytest

from services.segments.settings import SegmentsSettings


def test_defaults_work_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "XSELL_SEGMENTS_GRPC_PORT",
        "XSELL_SEGMENTS_EVENT_RETENTION_DAYS",
        "XSELL_SEGMENTS_FUTURE_SKEW_SECONDS",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = SegmentsSettings()
    assert (settings.grpc_port, settings.event_retention_days, settings.future_skew_seconds) == (50061, 730, 300)
    assert settings.resolved_database_url("segments").endswith("segments.db")


def test_environment_overrides_under_the_service_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XSELL_SEGMENTS_GRPC_PORT", "6000")
    monkeypatch.setenv("XSELL_SEGMENTS_EVENT_RETENTION_DAYS", "30")
    monkeypatch.setenv("XSELL_CAMPAIGNS_FUTURE_SKEW_SECONDS", "1")
    settings = SegmentsSettings()
    assert (settings.grpc_port, settings.event_retention_days, settings.future_skew_seconds) == (6000, 30, 300)


@pytest.mark.parametrize("setting", ["XSELL_SEGMENTS_CONSENT_ATTRIBUTES", "XSELL_SEGMENTS_ADDRESS_ATTRIBUTES"])
def test_attributes_by_channel_name_refuse_a_name_that_is_no_channel(
    monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv(setting, '{"E-MAIL": "email"}')
    with pytest.raises(ValueError, match=r"keys must be channel names \(EMAIL, SMS, .*\), not E-MAIL"):
        SegmentsSettings()

"""A campaign's trigger and resend settings: from the contract, as stored JSON, and back onto the contract."""

from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from plumbing.errors import InvalidArgument
from services.campaigns.resends import ResendRule, validate_resend
from services.campaigns.triggers import TriggerCatalog, TriggerRule, validate_trigger
from xsell.campaigns.v1 import resources_pb2


@dataclass(frozen=True)
class Automation:
    """Set on triggered campaigns (trigger) and on campaigns that resend (resend); both may be unset."""

    trigger: TriggerRule | None = None
    resend: ResendRule | None = None

    def to_json(self) -> dict[str, Any] | None:
        if self.trigger is None and self.resend is None:
            return None
        return {
            "trigger": asdict(self.trigger) if self.trigger else None,
            "resend": asdict(self.resend) if self.resend else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "Automation":
        if not data:
            return cls()
        return cls(
            trigger=TriggerRule(**data["trigger"]) if data.get("trigger") else None,
            resend=ResendRule(**data["resend"]) if data.get("resend") else None,
        )


def automation_of(row: Any) -> Automation:
    """The automation of a campaigns row (a row from before migration 0006 has none)."""
    return Automation.from_json(getattr(row, "automation", None))


def automation_from_proto(campaign: resources_pb2.Campaign, catalog: TriggerCatalog, trigger_code: str) -> Automation:
    """Validates the trigger and resend of a campaign message; InvalidArgument names the first bad field."""
    trigger = None
    if campaign.HasField("trigger"):
        if campaign.trigger.source != resources_pb2.TRIGGER_SOURCE_SEGMENT_ENTRY:
            raise InvalidArgument(
                "trigger.source must be TRIGGER_SOURCE_SEGMENT_ENTRY: a person entering the campaign's segment",
                field="campaign.trigger.source",
            )
        cool_down = campaign.trigger.cool_down.ToTimedelta() if campaign.trigger.HasField("cool_down") else None
        trigger = validate_trigger(
            catalog,
            trigger_code,
            cool_down,
            has_send_time=campaign.schedule.HasField("send_time"),
            has_recurrence=campaign.schedule.HasField("recurrence"),
            has_distribution=campaign.distribution.percent_per_step not in (0, 100),
        )
    resend = None
    if campaign.HasField("resend"):
        condition = resources_pb2.ResendCondition.Name(campaign.resend.condition).removeprefix("RESEND_CONDITION_")
        resend = validate_resend(condition, campaign.resend.delay.ToTimedelta(), campaign.resend.time_of_day)
    return Automation(trigger, resend)


def fill_automation(campaign: resources_pb2.Campaign, automation: Automation) -> None:
    """Writes the stored trigger and resend back onto a campaign message."""
    if automation.trigger is not None:
        campaign.trigger.source = resources_pb2.TRIGGER_SOURCE_SEGMENT_ENTRY
        campaign.trigger.cool_down.FromTimedelta(automation.trigger.cool_down)
    if automation.resend is not None:
        rule = automation.resend
        campaign.resend.condition = resources_pb2.ResendCondition.Value(f"RESEND_CONDITION_{rule.condition}")  # type: ignore[assignment]
        campaign.resend.delay.FromTimedelta(timedelta(seconds=rule.delay_seconds))
        campaign.resend.time_of_day = f"{rule.minute_of_day // 60:02d}:{rule.minute_of_day % 60:02d}"

"""A campaign's trigger, resend and fallback settings: from the contract, as stored JSON, and back onto the
contract."""

from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from plumbing.errors import InvalidArgument, enum_name
from plumbing.times import duration_of
from services.campaigns.resends import ResendRule, validate_resend
from services.campaigns.triggers import TriggerCatalog, TriggerRule, validate_trigger
from xsell.campaigns.v1 import resources_pb2

FELL_BACK = "fell_back"
"""A failed outreach's fallback decision when its fallback was created."""
LAST_CHANNEL = "last_channel"
"""A failed outreach on the last channel of the campaign's order: there is none to fall back to."""


@dataclass(frozen=True)
class Automation:
    """Set on triggered campaigns (trigger), on campaigns that resend (resend) and on those that fall back to a later
    channel when an outreach fails (fallback); all may be unset."""

    trigger: TriggerRule | None = None
    resend: ResendRule | None = None
    fallback: bool = False

    def to_json(self) -> dict[str, Any] | None:
        if self.trigger is None and self.resend is None and not self.fallback:
            return None
        return {
            "trigger": asdict(self.trigger) if self.trigger else None,
            "resend": asdict(self.resend) if self.resend else None,
            "fallback": self.fallback,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "Automation":
        if not data:
            return cls()
        return cls(
            trigger=TriggerRule(**data["trigger"]) if data.get("trigger") else None,
            resend=ResendRule(**data["resend"]) if data.get("resend") else None,
            fallback=bool(data.get("fallback", False)),
        )

    @property
    def follow_ups(self) -> tuple[str, ...]:
        """What the follow-up runner does for the campaign after its release: "resend", "fallback", both or none."""
        return tuple(what for what, on in (("resend", self.resend is not None), ("fallback", self.fallback)) if on)

    @property
    def follows_up(self) -> bool:
        """Whether the campaign stays RUNNING after its release, for the follow-up runner: resends or fallbacks."""
        return bool(self.follow_ups)


def automation_of(row: Any) -> Automation:
    """The automation of a campaigns row (a row from before migration 0006 has none)."""
    return Automation.from_json(getattr(row, "automation", None))


MAX_COOL_DOWN = timedelta(days=366)
"""The longest a trigger may wait before it fires again for the same person: a year."""
MAX_RESEND_DELAY = timedelta(days=90)
"""The longest a resend may wait after its message: a campaign's offer is stale long before."""


def automation_from_proto(campaign: resources_pb2.Campaign, catalog: TriggerCatalog, trigger_code: str) -> Automation:
    """Validates the trigger and resend of a campaign message; InvalidArgument names the first bad field."""
    trigger = None
    if campaign.HasField("trigger"):
        if campaign.trigger.source != resources_pb2.TRIGGER_SOURCE_SEGMENT_ENTRY:
            raise InvalidArgument(
                "trigger.source must be TRIGGER_SOURCE_SEGMENT_ENTRY: a person entering the campaign's segment",
                field="campaign.trigger.source",
            )
        cool_down = (
            duration_of(campaign.trigger.cool_down, "campaign.trigger.cool_down", at_most=MAX_COOL_DOWN)
            if campaign.trigger.HasField("cool_down")
            else None
        )
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
        condition = enum_name(resources_pb2.ResendCondition, campaign.resend.condition, "campaign.resend.condition")
        delay = duration_of(campaign.resend.delay, "campaign.resend.delay", at_most=MAX_RESEND_DELAY)
        resend = validate_resend(condition.removeprefix("RESEND_CONDITION_"), delay, campaign.resend.time_of_day)
    if campaign.fallback_on_failure and not campaign.fallback_channels:
        raise InvalidArgument(
            "fallback_on_failure needs fallback_channels: the channels, in order, a failed outreach falls back to "
            "(e.g. [CHANNEL_SMS] after CHANNEL_WHATSAPP)",
            field="campaign.fallback_on_failure",
        )
    return Automation(trigger, resend, fallback=campaign.fallback_on_failure)


def fill_automation(campaign: resources_pb2.Campaign, automation: Automation) -> None:
    """Writes the stored trigger, resend and fallback back onto a campaign message."""
    campaign.fallback_on_failure = automation.fallback
    if automation.trigger is not None:
        campaign.trigger.source = resources_pb2.TRIGGER_SOURCE_SEGMENT_ENTRY
        campaign.trigger.cool_down.FromTimedelta(automation.trigger.cool_down)
    if automation.resend is not None:
        rule = automation.resend
        campaign.resend.condition = resources_pb2.ResendCondition.Value(f"RESEND_CONDITION_{rule.condition}")  # type: ignore[assignment]
        campaign.resend.delay.FromTimedelta(timedelta(seconds=rule.delay_seconds))
        campaign.resend.time_of_day = f"{rule.minute_of_day // 60:02d}:{rule.minute_of_day % 60:02d}"

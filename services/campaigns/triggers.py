"""Triggered campaigns: the trigger catalog, the per-person cool-down and the day a trigger's outreach belongs to."""

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

from plumbing.errors import InvalidArgument
from services.campaigns.campaign_ids import BROADCAST_TRIGGER_CODE, TRIGGER_CODE_PATTERN

DEFAULT_TRIGGER_CATALOG = Path(__file__).parent / "catalogs" / "triggers.yaml"
SEGMENT_ENTRY = "SEGMENT_ENTRY"
DEFAULT_COOL_DOWN = timedelta(days=30)
# At least a day: a triggered campaign keeps one run per local day, and a person has one outreach per run.
MIN_COOL_DOWN = timedelta(days=1)


class TriggerCatalogError(ValueError):
    """The trigger catalog file is malformed; the message names the entry and field."""


@dataclass(frozen=True)
class TriggerDefinition:
    """One coded trigger, e.g. T06 "MSME registered in a new GST state", and the segment rule that expresses it."""

    code: str
    name: str
    segment_rule: str


@dataclass(frozen=True)
class TriggerCatalog:
    """The institution's trigger codes; a triggered campaign's trigger_code must be one of them."""

    version: str
    triggers: tuple[TriggerDefinition, ...] = ()

    def get(self, code: str) -> TriggerDefinition | None:
        return next((t for t in self.triggers if t.code == code), None)


def parse_trigger_catalog(document: object, source: str) -> TriggerCatalog:
    if not isinstance(document, dict) or not isinstance(document.get("triggers"), list):
        raise TriggerCatalogError(f"{source}: expected a mapping with `version` and a `triggers` list")
    seen: set[str] = set()
    triggers: list[TriggerDefinition] = []
    for index, entry in enumerate(document["triggers"]):
        where = f"{source}: triggers[{index}]"
        if not isinstance(entry, dict):
            raise TriggerCatalogError(f"{where} must be a mapping with code, name and segment_rule")
        code, name = str(entry.get("code", "")), str(entry.get("name", "")).strip()
        if not TRIGGER_CODE_PATTERN.match(code) or code == BROADCAST_TRIGGER_CODE:
            raise TriggerCatalogError(f"{where}.code {code!r} must be T01 to T99")
        if code in seen:
            raise TriggerCatalogError(f"{where}.code {code} is listed twice")
        if not name:
            raise TriggerCatalogError(f"{where}.name is required")
        seen.add(code)
        triggers.append(TriggerDefinition(code, name, str(entry.get("segment_rule", "")).strip()))
    return TriggerCatalog(str(document.get("version", "")), tuple(triggers))


def load_trigger_catalog(path: str) -> TriggerCatalog:
    """Reads the catalog file; an empty path means no triggers (no campaign can be triggered)."""
    if not path:
        return TriggerCatalog(version="")
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise TriggerCatalogError(f"{path}: {error}") from error
    return parse_trigger_catalog(document, path)


@dataclass(frozen=True)
class TriggerRule:
    """What starts an outreach (a segment entry) and the least time between two to the same person."""

    source: str = SEGMENT_ENTRY
    cool_down_seconds: int = int(DEFAULT_COOL_DOWN.total_seconds())

    @property
    def cool_down(self) -> timedelta:
        return timedelta(seconds=self.cool_down_seconds)


def validate_trigger(
    catalog: TriggerCatalog,
    trigger_code: str,
    cool_down: timedelta | None,
    *,
    has_send_time: bool,
    has_recurrence: bool,
    has_distribution: bool,
) -> TriggerRule:
    """The trigger rule of a triggered campaign; InvalidArgument names the field that cannot be."""
    definition = catalog.get(trigger_code)
    if definition is None:
        known = ", ".join(f"{t.code} ({t.name})" for t in catalog.triggers) or "none"
        raise InvalidArgument(
            f"trigger_code {trigger_code!r} is not in the trigger catalog; a triggered campaign needs one of: {known}",
            field="campaign.trigger_code",
        )
    if has_send_time or has_recurrence:
        raise InvalidArgument(
            "a triggered campaign sends when a trigger fires; leave schedule.send_time and schedule.recurrence unset",
            field="campaign.schedule",
        )
    if has_distribution:
        raise InvalidArgument(
            "a triggered campaign reaches one person per trigger; leave distribution unset",
            field="campaign.distribution",
        )
    if cool_down is None or cool_down == timedelta(0):
        return TriggerRule()
    if cool_down < MIN_COOL_DOWN:
        raise InvalidArgument(
            "trigger.cool_down must be at least one day (86400s), e.g. 2592000s for 30 days",
            field="campaign.trigger.cool_down",
        )
    return TriggerRule(cool_down_seconds=int(cool_down.total_seconds()))


def cool_down_over(last_outreach_at: datetime | None, now: datetime, cool_down: timedelta) -> bool:
    """True when the person may get another outreach: never had one, or the last is cool_down or more ago."""
    return last_outreach_at is None or now >= last_outreach_at + cool_down


def trigger_day(now: datetime, time_zone: str) -> datetime:
    """The start (UTC) of the local day holding `now`: the occurrence of the day's trigger run."""
    zone = ZoneInfo(time_zone)
    start = datetime.combine(now.astimezone(zone).date(), time(), tzinfo=zone)
    return start.astimezone(ZoneInfo("UTC"))


def fires(change_time: datetime, launched_at: datetime | None, event_version: int, pinned_version: int) -> bool:
    """A segment entry triggers the campaign when it happened after the launch, on the pinned segment version."""
    return launched_at is not None and change_time >= launched_at and event_version == pinned_version

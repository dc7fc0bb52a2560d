"""Campaign files: a YAML (or JSON) form of xsell.campaigns.v1.Campaign, with the shorthands an operator writes.

A file holds one campaign. Keys are the proto's field names (docs/campaigns.md explains each)::

    display_name: Lumpsum Opportunity for SIP Investors   # the campaign's identity for `xsell apply`
    segment: SIP-only investors        # a segment's display name (as in its file), or segment_id: seg_...
    category: cross_sell_new_category  # enum values without their prefix, any case
    channel: email
    offer: {product_code: MF_LUMPSUM, amount: {inr: 25000}}
    # or each person's amount and who may have it (conditions as in segment files, all of which must hold):
    # offer:
    #   product_code: PL_TOPUP
    #   amount_rule: {attribute: preapproved_limit, share_basis_points: 8000, maximum: {inr: 2000000}}
    #   eligibility: [{name: bureau_score, gte: 750}, {name: held_products, contains_none: [personal_loan]}]
    distribution: {percent_per_step: 25, interval: 1h}
    schedule: {send_time: 2026-12-01T09:00:00+05:30, time_zone: Asia/Kolkata}

Shorthands: enum values without their prefix (``email`` for ``CHANNEL_EMAIL``); durations as ``90s``,
``30m``, ``2h`` or ``7d``; money as ``{inr: 17400}`` (rupees, at most 2 decimals), ``{paise: 1740000}``
or ``{minor_units: 500, currency_code: USD}``; timestamps as ISO times with a zone. Fields the service
assigns (campaign_key, state, version, author...) are refused. Errors name the path into the file.
"""

import json
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from cli.record_files import DURATION_UNITS, LineProblem, rupees
from services.segments.rule_files import RuleFileError, condition_from_data
from xsell.campaigns.v1 import resources_pb2

ASSIGNED_BY_SERVICE = frozenset(
    {
        "campaign_key",
        "segment_version",
        "state",
        "outreach_count",
        "create_time",
        "launch_time",
        "version",
        "author",
        "approver",
        "pause_reason",
    }
)
SEGMENT_BY_NAME = "segment"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


class CampaignFileError(ValueError):
    """A campaign file that cannot be used: `path` points into the file, the message says what would be valid."""

    def __init__(self, source: str, path: str, message: str) -> None:
        super().__init__(": ".join(part for part in (source, path, message) if part))
        self.path = path


@dataclass(frozen=True)
class CampaignFile:
    """One campaign as written in a file; `segment_name` is set when it names its segment instead of an id."""

    campaign: resources_pb2.Campaign
    segment_name: str


def is_campaign_document(data: Any) -> bool:
    """Segment files have a rule; everything else `xsell apply` reads is a campaign."""
    return isinstance(data, dict) and "rule" not in data


def load_document(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as problem:
        raise CampaignFileError(str(path), "", f"not valid JSON: {problem.msg} at line {problem.lineno}") from None
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise CampaignFileError(str(path), "", f"not valid YAML: {getattr(problem, 'problem', None)}{at}") from None


def parse_campaign_data(data: Any, *, source: str = "") -> CampaignFile:
    """The campaign in a decoded document; CampaignFileError at the first problem."""
    if not isinstance(data, dict):
        raise CampaignFileError(source, "", "a campaign file is a mapping of Campaign fields, e.g. display_name: ...")
    data = dict(data)
    segment_name = data.pop(SEGMENT_BY_NAME, "")
    if segment_name and "segment_id" in data:
        raise CampaignFileError(source, SEGMENT_BY_NAME, "give either segment (a name) or segment_id, not both")
    if not isinstance(segment_name, str):
        raise CampaignFileError(
            source, SEGMENT_BY_NAME, "segment is a segment's display name, e.g. 'SIP-only investors'"
        )
    if not segment_name and not data.get("segment_id"):
        raise CampaignFileError(source, SEGMENT_BY_NAME, "segment (a display name) or segment_id is required")
    if not isinstance(data.get("display_name"), str) or not data["display_name"].strip():
        raise CampaignFileError(source, "display_name", "display_name is required: it identifies the campaign")
    for key in data:
        if key in ASSIGNED_BY_SERVICE:
            raise CampaignFileError(source, key, f"{key} is assigned by the service; remove it from the file")
    normalized = _message(data, resources_pb2.Campaign.DESCRIPTOR, "", source)
    campaign = resources_pb2.Campaign()
    try:
        json_format.ParseDict(normalized, campaign)
    except json_format.ParseError as error:
        raise CampaignFileError(source, "", str(error)) from None
    return CampaignFile(campaign, segment_name)


def load_campaign_file(path: Path) -> CampaignFile:
    return parse_campaign_data(load_document(path), source=str(path))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _message(data: Any, descriptor: Descriptor, path: str, source: str) -> dict[str, Any]:
    if descriptor.full_name == "xsell.type.v1.Money":
        return _money(data, path, source)
    if descriptor.full_name == "xsell.segments.v1.AttributeCondition" and isinstance(data, dict) and "name" in data:
        # An offer's eligibility condition, written as in segment files: {name: bureau_score, gte: 750}.
        try:
            condition = condition_from_data(data, path=path)
        except RuleFileError as problem:
            raise CampaignFileError(source, problem.path, problem.message) from None
        return json_format.MessageToDict(condition, preserving_proto_field_name=True)
    if not isinstance(data, dict):
        raise CampaignFileError(source, path, f"expected a mapping of {descriptor.name} fields, got {data!r}")
    fields = descriptor.fields_by_name
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = fields.get(str(key))
        if field is None:
            close = get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; {descriptor.name} has {', '.join(fields)}"
            raise CampaignFileError(source, _join(path, str(key)), f"unknown field {key!r}{hint}")
        where = _join(path, field.name)
        if field.is_repeated:
            if not isinstance(value, list):
                raise CampaignFileError(source, where, f"expected a list, got {value!r}")
            out[field.name] = [_value(item, field, f"{where}[{index}]", source) for index, item in enumerate(value)]
        else:
            out[field.name] = _value(value, field, where, source)
    return out


def _value(value: Any, field: FieldDescriptor, path: str, source: str) -> Any:
    if field.enum_type is not None:
        return _enum(value, field.enum_type, path, source)
    message_type = field.message_type
    if message_type is None:
        return value
    if message_type.full_name == "google.protobuf.Duration":
        return _duration(value, path, source)
    if message_type.full_name == "google.protobuf.Timestamp":
        return _timestamp(value, path, source)
    return _message(value, message_type, path, source)


def _enum(value: Any, enum: EnumDescriptor, path: str, source: str) -> str:
    names = [v.name for v in enum.values if not v.name.endswith("_UNSPECIFIED")]
    prefix = names[0][: len(names[0]) - len(names[0].split("_")[-1])] if names else ""
    # The prefix is the common start of all names (CHANNEL_, CAMPAIGN_CATEGORY_, CAP_SCOPE_...).
    for name in names:
        while not name.startswith(prefix):
            prefix = prefix[: prefix[:-1].rfind("_") + 1]
    text = str(value).strip().upper().replace("-", "_").replace(" ", "_")
    for candidate in (text, prefix + text):
        if candidate in names:
            return candidate
    choices = ", ".join(name[len(prefix) :].lower() for name in names)
    raise CampaignFileError(source, path, f"{value!r} is not one of {choices}")


def _duration(value: Any, path: str, source: str) -> str:
    match = _DURATION.match(str(value).strip())
    if not match:
        raise CampaignFileError(source, path, f"{value!r} is not a duration; write e.g. 90s, 30m, 2h or 7d")
    seconds = Decimal(match.group(1)) * DURATION_UNITS[match.group(2)]
    return f"{seconds.normalize():f}s"


def _timestamp(value: Any, path: str, source: str) -> str:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        raise CampaignFileError(
            source, path, f"{value} is a date; give a time with a zone, e.g. {value}T09:00:00+05:30"
        )
    else:
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise CampaignFileError(
                source, path, f"{value!r} is not an ISO time, e.g. 2026-12-01T09:00:00+05:30"
            ) from None
    if moment.tzinfo is None:
        raise CampaignFileError(source, path, f"{value} has no time zone; add one, e.g. +05:30 or Z")
    return moment.isoformat()


def _money(value: Any, path: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) not in (1, 2):
        raise CampaignFileError(
            source, path, "money is {inr: 17400}, {paise: 1740000} or {minor_units: ..., currency_code: ...}"
        )
    if "inr" in value and len(value) == 1:
        try:
            paise = rupees(value["inr"], "inr").minor_units  # as `xsell profiles load` reads rupees
        except LineProblem as problem:
            raise CampaignFileError(source, _join(path, "inr"), problem.reason) from None
        return {"minor_units": str(paise), "currency_code": "INR"}
    if "paise" in value and len(value) == 1:
        return {"minor_units": str(int(value["paise"])), "currency_code": "INR"}
    if set(value) == {"minor_units", "currency_code"}:
        return {"minor_units": str(int(value["minor_units"])), "currency_code": str(value["currency_code"])}
    raise CampaignFileError(
        source, path, "money is {inr: 17400}, {paise: 1740000} or {minor_units: ..., currency_code: ...}"
    )

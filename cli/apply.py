"""`xsell apply`: make the gateway's segments and campaigns match files, creating or updating by display name.

Every call's request_id is derived from the file's content (and the version it replaces), so applying the
same files again is a no-op, and a retry after a lost answer is deduplicated by the service.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from cli.campaign_files import CampaignFile, CampaignFileError, is_campaign_document, load_document, parse_campaign_data
from cli.client import CliError, Gateway, derived_request_id
from cli.output import Progress
from services.segments.rule_files import RuleFileError, SegmentFile, parse_segment_data
from xsell.campaigns.v1 import resources_pb2 as campaign_resources
from xsell.campaigns.v1 import service_pb2 as campaigns_pb2
from xsell.segments.v1 import resources_pb2 as segment_resources
from xsell.segments.v1 import service_pb2 as segments_pb2

FILE_SUFFIXES = (".yaml", ".yml", ".json")
LIST_PAGE = 500
NOT_YET_CREATED = "-"
_FINAL_STATES: dict[str, set[int]] = {
    "segment": {segment_resources.SEGMENT_STATE_ARCHIVED},
    "campaign": {campaign_resources.CAMPAIGN_STATE_CANCELLED},
}


@dataclass(frozen=True)
class Applied:
    """What apply did with one file."""

    path: str
    kind: str
    id: str
    version: int
    action: str

    def __str__(self) -> str:
        return f"{self.action} {self.kind} {self.id} (version {self.version})"


def expand(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in FILE_SUFFIXES and p.is_file())
        elif path.exists():
            files.append(path)
        else:
            raise CliError(f"{path}: no such file or directory")
    return files


def read_all(files: list[Path]) -> tuple[list[tuple[Path, SegmentFile]], list[tuple[Path, CampaignFile]]]:
    """Every file parsed before anything is sent: one bad file applies nothing, and all problems are listed."""
    segments, campaigns, problems = [], [], []
    for path in files:
        try:
            data = load_document(path)
            if is_campaign_document(data):
                campaigns.append((path, parse_campaign_data(data, source=str(path))))
            else:
                segments.append((path, parse_segment_data(data, source=str(path))))
        except (RuleFileError, CampaignFileError) as error:
            problems.append(str(error))
    if problems:
        raise CliError("\n".join(problems))
    return segments, campaigns


def _every_page(gateway: Gateway, method: Any, request_type: Any, field: str) -> list[Any]:
    """Follows next_page_token until the list ends (AIP-158)."""
    found: list[Any] = []
    token = ""
    while True:
        reply = gateway.call(method, request_type(page_size=LIST_PAGE, page_token=token))
        found += getattr(reply, field)
        token = reply.next_page_token
        if not token:
            return found


def list_segments(gateway: Gateway) -> list[segment_resources.Segment]:
    return _every_page(gateway, gateway.segments.ListSegments, segments_pb2.ListSegmentsRequest, "segments")


def list_campaigns(gateway: Gateway) -> list[campaign_resources.Campaign]:
    return _every_page(gateway, gateway.campaigns.ListCampaigns, campaigns_pb2.ListCampaignsRequest, "campaigns")


def _by_name(items: list[Any], name: str, kind: str) -> Any | None:
    """The one live segment or campaign with this display name; archived and cancelled ones do not count."""
    live = [item for item in items if item.display_name == name and item.state not in _FINAL_STATES[kind]]
    if len(live) > 1:
        ids = ", ".join(getattr(item, "segment_id", "") or getattr(item, "campaign_key", "") for item in live)
        raise CliError(f"{len(live)} {kind}s are named {name!r} ({ids}); rename one so apply knows which")
    return live[0] if live else None


def apply_segment(
    gateway: Gateway, path: Path, segment: SegmentFile, existing: list[Any], dry_run: bool = False
) -> Applied:
    content = segment_resources.Segment(display_name=segment.name, description=segment.description, rule=segment.rule)
    digest = content.SerializeToString(deterministic=True)
    current = _by_name(existing, segment.name, "segment")
    if current is None and dry_run:
        # So campaigns in the same dry run can name it.
        existing.append(segment_resources.Segment(segment_id=NOT_YET_CREATED, display_name=segment.name))
        return Applied(str(path), "segment", NOT_YET_CREATED, 0, "would create")
    if current is None:
        created = gateway.call(
            gateway.segments.CreateSegment,
            segments_pb2.CreateSegmentRequest(
                request_id=derived_request_id("apply-segment", segment.name, 0, digest), segment=content
            ),
        ).segment
        existing.append(created)
        return Applied(str(path), "segment", created.segment_id, created.version, "created")
    # List rows may omit the rule; the current version has it.
    current = gateway.call(
        gateway.segments.GetSegment, segments_pb2.GetSegmentRequest(segment_id=current.segment_id)
    ).segment
    if current.rule == segment.rule and current.description == segment.description:
        return Applied(str(path), "segment", current.segment_id, current.version, "unchanged")
    if dry_run:
        return Applied(str(path), "segment", current.segment_id, current.version, "would update")
    updated = gateway.call(
        gateway.segments.UpdateSegment,
        segments_pb2.UpdateSegmentRequest(
            request_id=derived_request_id("apply-segment", current.segment_id, current.version, digest),
            segment_id=current.segment_id,
            display_name=segment.name,
            description=segment.description,
            rule=segment.rule,
        ),
    ).segment
    return Applied(str(path), "segment", updated.segment_id, updated.version, "updated")


def contains(actual: Any, wanted: Any) -> bool:
    """Whether every field the file sets has that value on the service's campaign (which adds defaults)."""
    for field, value in wanted.ListFields():
        if field.message_type is not None and not field.is_repeated:
            if not actual.HasField(field.name) or not contains(getattr(actual, field.name), value):
                return False
        elif getattr(actual, field.name) != value:
            return False
    return True


def apply_campaign(
    gateway: Gateway, path: Path, file: CampaignFile, campaigns: list[Any], segments: list[Any], dry_run: bool = False
) -> Applied:
    campaign = campaign_resources.Campaign()
    campaign.CopyFrom(file.campaign)
    if file.segment_name:
        segment = _by_name(segments, file.segment_name, "segment")
        if segment is None:
            raise CliError(f"{path}: segment: no segment is named {file.segment_name!r}; apply its file first")
        campaign.segment_id = segment.segment_id
    digest = campaign.SerializeToString(deterministic=True)
    current = _by_name(campaigns, campaign.display_name, "campaign")
    if current is None and dry_run:
        return Applied(str(path), "campaign", NOT_YET_CREATED, 0, "would create")
    if current is None:
        created = gateway.call(
            gateway.campaigns.CreateCampaign,
            campaigns_pb2.CreateCampaignRequest(
                request_id=derived_request_id("apply-campaign", campaign.display_name, 0, digest), campaign=campaign
            ),
        ).campaign
        campaigns.append(created)
        return Applied(str(path), "campaign", created.campaign_key, created.version, "created")
    if contains(current, campaign):
        return Applied(str(path), "campaign", current.campaign_key, current.version, "unchanged")
    if dry_run:
        return Applied(str(path), "campaign", current.campaign_key, current.version, "would update")
    updated = gateway.call(
        gateway.campaigns.UpdateCampaign,
        campaigns_pb2.UpdateCampaignRequest(
            request_id=derived_request_id("apply-campaign", current.campaign_key, current.version, digest),
            campaign_key=current.campaign_key,
            campaign=campaign,
            expected_version=current.version,
        ),
    ).campaign
    return Applied(str(path), "campaign", updated.campaign_key, updated.version, "updated")


def apply(gateway: Gateway, paths: list[Path], err: TextIO, *, dry_run: bool = False) -> list[Applied]:
    """Segments first, so campaigns in the same run can name them; a dry run only reads."""
    segment_files, campaign_files = read_all(expand(paths))
    progress = Progress(len(segment_files) + len(campaign_files), err)
    results: list[Applied] = []
    segments = list_segments(gateway)
    for path, segment in segment_files:
        results.append(progress.step(str(path), partial(apply_segment, gateway, path, segment, segments, dry_run)))
    if campaign_files:
        campaigns = list_campaigns(gateway)
        for path, file in campaign_files:
            results.append(
                progress.step(str(path), partial(apply_campaign, gateway, path, file, campaigns, segments, dry_run))
            )
    return results

"""The per-outreach campaign ID, e.g. CSELL-NOV-T06-0884: programme, month, trigger code, sequence."""

import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from plumbing.errors import InvalidArgument

PROGRAMME_PATTERN = re.compile(r"^[A-Z]{2,10}$")
TRIGGER_CODE_PATTERN = re.compile(r"^T[0-9]{2}$")
DEFAULT_PROGRAMME = "CSELL"
BROADCAST_TRIGGER_CODE = "T00"
"""The trigger code of scheduled broadcasts, which no trigger event starts."""

# English month abbreviations, fixed here rather than taken from the locale so the ID never
# depends on the machine that creates it.
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_CAMPAIGN_ID_PATTERN = re.compile(r"^([A-Z]{2,10})-([A-Z]{3})-(T[0-9]{2})-([0-9]{4,})$")


def normalise_programme(programme: str) -> str:
    """The programme prefix, CSELL when empty; InvalidArgument unless 2-10 upper-case letters."""
    if not programme:
        return DEFAULT_PROGRAMME
    if not PROGRAMME_PATTERN.match(programme):
        raise InvalidArgument(
            f"programme {programme!r} must be 2 to 10 upper-case letters A-Z, e.g. 'CSELL' (empty means CSELL)",
            field="campaign.programme",
        )
    return programme


def normalise_trigger_code(trigger_code: str) -> str:
    """The trigger code, T00 (scheduled broadcast) when empty; InvalidArgument unless T and two digits."""
    if not trigger_code:
        return BROADCAST_TRIGGER_CODE
    if not TRIGGER_CODE_PATTERN.match(trigger_code):
        raise InvalidArgument(
            f"trigger_code {trigger_code!r} must be 'T' and two digits, e.g. 'T06'; T00 (the default) means "
            "a scheduled broadcast with no trigger",
            field="campaign.trigger_code",
        )
    return trigger_code


def month_code(instant: datetime, time_zone: str) -> str:
    """The upper-case English month abbreviation of `instant` as read in `time_zone`, e.g. "NOV".

    The month is local: 31 Oct 20:00 UTC is already 1 Nov in Asia/Kolkata, so its outreaches are NOV.
    """
    if instant.tzinfo is None:
        raise ValueError("instant must be timezone-aware")
    return _MONTHS[instant.astimezone(ZoneInfo(time_zone)).month - 1]


def format_campaign_id(programme: str, month: str, trigger_code: str, sequence: int) -> str:
    """CSELL-NOV-T06-0884; the sequence is zero-padded to four digits and simply grows wider past 9999."""
    if sequence < 1:
        raise ValueError("campaign ID sequences start at 1")
    return f"{programme}-{month}-{trigger_code}-{sequence:04d}"


@dataclass(frozen=True)
class CampaignIdParts:
    """The four parts of a campaign ID."""

    programme: str
    month: str
    trigger_code: str
    sequence: int


def parse_campaign_id(campaign_id: str) -> CampaignIdParts | None:
    """The parts of a well-formed campaign ID, or None."""
    match = _CAMPAIGN_ID_PATTERN.match(campaign_id)
    if match is None or match.group(2) not in _MONTHS:
        return None
    return CampaignIdParts(match.group(1), match.group(2), match.group(3), int(match.group(4)))


@dataclass(frozen=True)
class SequenceBlock:
    """A block of sequence numbers allocated in one statement: first..last inclusive."""

    first: int
    last: int

    @classmethod
    def ending_at(cls, last: int, size: int) -> "SequenceBlock":
        """The block a counter UPDATE that added `size` and returned `last` has reserved."""
        return cls(first=last - size + 1, last=last)

    def __len__(self) -> int:
        return self.last - self.first + 1

    def numbers(self) -> range:
        return range(self.first, self.last + 1)

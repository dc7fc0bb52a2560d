"""Protobuf enums, money and timestamps to and from the ledger's plain values."""

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from xsell.attribution.v1 import resources_pb2
from xsell.campaigns.v1 import resources_pb2 as campaigns_pb2
from xsell.type.v1 import channel_pb2, money_pb2


def _short(full_name: str, prefix: str) -> str:
    return full_name.removeprefix(prefix).lower()


def channel_name(channel: channel_pb2.Channel.ValueType) -> str:
    """CHANNEL_EMAIL → "email", the key of the send-cost table."""
    return _short(channel_pb2.Channel.Name(channel), "CHANNEL_")


def channel_value(name: str) -> channel_pb2.Channel.ValueType:
    return channel_pb2.Channel.Value(f"CHANNEL_{name.upper()}")


def category_name(category: campaigns_pb2.CampaignCategory.ValueType) -> str:
    return _short(campaigns_pb2.CampaignCategory.Name(category), "CAMPAIGN_CATEGORY_")


def origin_name(origin: resources_pb2.LeadOrigin.ValueType) -> str:
    """How a lead came to exist; unset means the CRM created it."""
    if origin == resources_pb2.LEAD_ORIGIN_UNSPECIFIED:
        origin = resources_pb2.LEAD_ORIGIN_CRM
    return _short(resources_pb2.LeadOrigin.Name(origin), "LEAD_ORIGIN_")


def origin_value(name: str) -> resources_pb2.LeadOrigin.ValueType:
    return resources_pb2.LeadOrigin.Value(f"LEAD_ORIGIN_{name.upper()}")


def stage_value(name: str) -> resources_pb2.LoanStage.ValueType:
    return resources_pb2.LoanStage.Value(f"LOAN_STAGE_{name.upper()}")


def conversion_kind_name(kind: resources_pb2.ConversionKind.ValueType) -> str:
    """CONVERSION_KIND_LUMPSUM_INVESTED → "lumpsum_invested"; ValueError for an unknown value."""
    return _short(resources_pb2.ConversionKind.Name(kind), "CONVERSION_KIND_")


def conversion_kind_value(name: str) -> resources_pb2.ConversionKind.ValueType:
    return resources_pb2.ConversionKind.Value(f"CONVERSION_KIND_{name.upper()}")


def linkage_value(name: str) -> resources_pb2.ConversionLinkage.ValueType:
    return resources_pb2.ConversionLinkage.Value(f"CONVERSION_LINKAGE_{name.upper()}")


def money(minor_units: int, currency: str) -> money_pb2.Money:
    return money_pb2.Money(minor_units=minor_units, currency_code=currency)


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp

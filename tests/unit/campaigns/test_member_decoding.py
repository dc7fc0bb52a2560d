"""A streamed member's attributes decode to the same Python values whichever kind each one holds."""

from datetime import UTC, datetime

from services.campaigns.rendering import Money
from services.campaigns.segments_client import attribute_value, attribute_values
from xsell.segments.v1 import resources_pb2


def test_every_kind_of_value_decodes_as_attribute_value_decodes_it() -> None:
    member = resources_pb2.Member(profile_id="p-1")
    attributes = member.attributes
    attributes["first_name"].string_value = "Asha"
    attributes["nickname"].string_value = ""
    attributes["aum"].number_value = 45_240.0
    attributes["zero"].number_value = 0.0
    attributes["kyc_done"].bool_value = True
    attributes["opted_in"].bool_value = False
    attributes["held"].string_set_value.values.extend(["MF", "FD"])
    attributes["joined"].timestamp_value.FromDatetime(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    attributes["balance"].money_value.minor_units = 17_40_000_00
    attributes["balance"].money_value.currency_code = "INR"
    attributes["unset"].SetInParent()

    decoded = attribute_values(attributes)

    assert decoded == {name: attribute_value(value) for name, value in attributes.items()}
    assert decoded["first_name"] == "Asha" and decoded["nickname"] == "" and decoded["unset"] is None
    assert decoded["zero"] == 0.0 and decoded["opted_in"] is False
    assert decoded["balance"] == Money(17_40_000_00, "INR")
    assert decoded["held"] == frozenset({"MF", "FD"})

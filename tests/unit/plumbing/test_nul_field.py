"""Which string of a request holds a NUL: the path a refusal names when PostgreSQL will not take it."""

from plumbing.grpc_server import nul_field
from xsell.segments.v1 import resources_pb2, service_pb2


def test_the_path_names_the_list_item_map_entry_and_field() -> None:
    clean = resources_pb2.Profile(profile_id="p1", attributes={"city": resources_pb2.Value(string_value="Pune")})
    dirty = resources_pb2.Profile(profile_id="p2", attributes={"city": resources_pb2.Value(string_value="Pu\x00ne")})
    request = service_pb2.UpsertProfilesRequest(request_id="r1", profiles=[clean, dirty])
    assert nul_field(request) == "profiles[1].attributes.city.string_value"


def test_a_nul_in_a_map_key_or_a_repeated_string_is_found_and_a_clean_request_has_none() -> None:
    keyed = resources_pb2.Profile(profile_id="p", attributes={"ci\x00ty": resources_pb2.Value(bool_value=True)})
    assert nul_field(keyed) == "attributes['ci\\x00ty']"
    stream = service_pb2.StreamSegmentMembersRequest(segment_id="seg_1", attribute_names=["city", "a\x00"])
    assert nul_field(stream) == "attribute_names[1]"
    assert nul_field(service_pb2.GetProfileRequest(profile_id="p\nq")) is None

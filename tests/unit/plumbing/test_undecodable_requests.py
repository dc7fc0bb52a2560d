"""The request deserializer that answers bytes protobuf cannot parse with a refusal instead of an exception."""

import grpc
from google.protobuf.message import DecodeError

from plumbing.grpc_server import PROTOBUF_MAX_DEPTH, Undecodable, catching_decode_errors
from xsell.segments.v1 import resources_pb2 as r

METHOD = "/xsell.segments.v1.SegmentsService/PreviewSegment"


def _nested(levels: int) -> bytes:
    """A Rule under `levels` negations (field 3), encoded by hand: protobuf refuses to build one this deep."""
    rule = r.Rule(segment=r.SegmentReference(segment_id="seg_1")).SerializeToString()
    for _ in range(levels):
        rule = b"\x1a" + _varint(len(rule)) + rule
    return rule


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _refusal(decoded: object) -> str:
    assert isinstance(decoded, Undecodable), decoded
    assert decoded.refusal.code == grpc.StatusCode.INVALID_ARGUMENT and decoded.refusal.field is None
    return str(decoded.refusal)


def test_a_valid_request_decodes_as_before() -> None:
    rule = r.Rule(segment=r.SegmentReference(segment_id="seg_1"))
    assert catching_decode_errors(r.Rule.FromString, METHOD)(rule.SerializeToString()) == rule


def test_a_message_nested_past_the_limit_is_refused_naming_the_limit() -> None:
    deserialize = catching_decode_errors(r.Rule.FromString, METHOD)
    assert not isinstance(deserialize(_nested(PROTOBUF_MAX_DEPTH - 2)), Undecodable)
    message = _refusal(deserialize(_nested(PROTOBUF_MAX_DEPTH + 1)))
    assert message == (
        f"the request is not a valid xsell.segments.v1.Rule: its messages nest more than {PROTOBUF_MAX_DEPTH} levels"
        f" deep; send that message as protobuf serializes it, nested at most {PROTOBUF_MAX_DEPTH} levels deep, with"
        " strings in UTF-8"
    )


def test_corrupt_bytes_and_bad_utf8_are_refused_with_protobufs_reason_and_no_request_bytes() -> None:
    deserialize = catching_decode_errors(r.SegmentReference.FromString, METHOD)
    corrupt = _refusal(deserialize(b"\xff\xff\xff\xff secret-looking bytes"))
    assert corrupt.startswith("the request is not a valid xsell.segments.v1.SegmentReference: ")
    assert "secret-looking" not in corrupt
    bad_utf8 = _refusal(deserialize(b"\x0a\x02\xff\xfe"))
    assert "UTF-8" in bad_utf8.partition(";")[0]


def test_a_deserializer_that_is_not_a_message_class_is_named_by_its_method() -> None:
    def parse(data: bytes) -> object:
        raise DecodeError("Truncated message.")

    assert _refusal(catching_decode_errors(parse, METHOD)(b"")).startswith(
        f"the request is not a valid request of {METHOD}: Truncated message; "
    )

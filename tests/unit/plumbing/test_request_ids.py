"""request_id: any string up to 200 characters that PostgreSQL can remember; a NUL is refused by name."""

import pytest

from plumbing.errors import InvalidArgument
from plumbing.idempotency import require_request_id
from xsell.attribution.v1 import service_pb2


@pytest.mark.parametrize("request_id", ["crm 7781/ü", "wa:wamid.HBg\n"])
def test_a_request_id_is_taken_as_given(request_id: str) -> None:
    assert require_request_id(service_pb2.CreateLeadRequest(request_id=request_id)) == request_id


def test_a_request_id_with_a_nul_is_refused_by_name() -> None:
    with pytest.raises(InvalidArgument) as refused:
        require_request_id(service_pb2.CreateLeadRequest(request_id="crm-7781\x00"))
    assert refused.value.field == "request_id"
    assert "NUL" in refused.value.message

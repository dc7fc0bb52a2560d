"""The xsell CLI against a real gateway in front of a real segments service: loading profiles and events (the demo
data fills every example segment; refused records are named by line, the rest stored) and maker-checker."""

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from gateway import scopes
from services.segments.rule_files import load_segment_file
from tests.integration.gateway.cli_process import REPO, xsell
from tests.integration.gateway.conftest import GatewayFactory, RunningGateway
from tests.integration.segments.server import serving
from xsell.segments.v1 import service_pb2 as segments_pb2
from xsell.segments.v1 import service_pb2_grpc as segments_grpc

DATA = REPO / "examples" / "data"
SEGMENTS = REPO / "examples" / "segments"

# The members examples/data/README.md lists for each fund example segment (demo-00NN).
DEMO_MEMBERS: dict[str, set[int]] = {
    "sip_only_investors.yaml": {1, 2, 5, 7, 12, 15, 18},
    "lumpsum_only_investors.yaml": {3, 8, 10, 13, 16, 19},
    "equity_only_investors.yaml": {1, 13, 18},
    "debt_only_investors.yaml": {3, 14},
    "single_scheme_investors.yaml": {1, 3, 13, 14, 18},
    "single_amc_investors.yaml": {1, 3, 9, 15},
    "no_elss_investors.yaml": set(range(1, 21)) - {4, 6, 7, 11},
    "no_international_exposure.yaml": set(range(1, 21)) - {5, 6, 11, 20},
    "no_sectoral_thematic.yaml": set(range(1, 21)) - {5, 6, 7, 17},
    "no_stp_investors.yaml": {3, 8, 13, 19},
    "no_swp_investors.yaml": {4, 5, 8, 12, 16, 19},
    "no_minor_folio.yaml": {1, 8, 18},
    "regular_plan_only.yaml": {1, 3, 7, 10, 11, 13, 15, 18, 19},
    "sip_no_stepup.yaml": {1, 7, 12, 14, 15, 18},
    "dividend_payout_only.yaml": {4, 7, 15, 19},
    "engagement_filter.yaml": {1, 5, 9, 18},
    "high_value_filter.yaml": {3, 11},
}
# And for each bank example segment, from the bank's demo customers (bank-00NN).
BANK_MEMBERS: dict[str, set[int]] = {
    "bank_card_likely_transactors.yaml": {1},
    "bank_deposit_direct_deposit_elsewhere.yaml": {6},
    "bank_personal_loan_preapproved.yaml": {6, 8, 12},
}


@pytest.fixture
async def gateway(
    start_gateway: GatewayFactory, database_url: str, nats_url: str, tmp_path: Path
) -> AsyncIterator[RunningGateway]:
    """A gateway whose segments service is real (on each database backend); the other services are not needed."""
    async with serving(database_url, nats_url, tmp_path / "segments") as (_, process):
        yield await start_gateway(segments_target=f"127.0.0.1:{process.server.port}")


async def test_the_demo_data_fills_every_example_segment(gateway: RunningGateway) -> None:
    """The fund platform's investors fill the fund segments and the bank's customers the bank ones, loaded side by
    side: neither set of people strays into the other's segments."""
    key = await gateway.add_key(scopes.ADMIN)
    for profiles, count in (("profiles.jsonl", "20"), ("bank_profiles.jsonl", "12")):
        code, stdout, stderr = await xsell(gateway.target, key, "profiles", "load", str(DATA / profiles))
        assert code == 0, stderr
        assert stdout.splitlines()[1].split() == [str(DATA / profiles), count, count, "0"]
    for events, at_least in (("events.jsonl", 50), ("bank_events.jsonl", 40)):
        code, stdout, stderr = await xsell(gateway.target, key, "events", "load", str(DATA / events), "--json")
        assert code == 0, stderr
        (loaded,) = json.loads(stdout)
        assert loaded["refused"] == [] and loaded["stored"] == loaded["records"] >= at_least

    stub = segments_grpc.SegmentsServiceStub(gateway.channel())
    got: dict[str, set[str]] = {}
    for file_name in {**DEMO_MEMBERS, **BANK_MEMBERS}:
        preview = await stub.PreviewSegment(
            segments_pb2.PreviewSegmentRequest(rule=load_segment_file(SEGMENTS / file_name).rule, sample_size=100),
            metadata=(("x-api-key", key),),
        )
        got[file_name] = set(preview.sample_profile_ids)
    assert got == {
        **{name: {f"demo-{n:04d}" for n in members} for name, members in DEMO_MEMBERS.items()},
        **{name: {f"bank-{n:04d}" for n in members} for name, members in BANK_MEMBERS.items()},
    }

    # Loading again changes nothing: the same values, events deduplicated by their ids.
    code, _, stderr = await xsell(gateway.target, key, "events", "load", str(DATA / "events.jsonl"))
    assert code == 0, stderr


async def test_refused_records_are_named_by_line_and_the_others_stored(gateway: RunningGateway, tmp_path: Path) -> None:
    key = await gateway.add_key(scopes.INGEST, scopes.PROFILES_READ)
    profiles = tmp_path / "crm.jsonl"
    profiles.write_text(
        '{"profile_id": "p1", "attributes": {"first_name": "Asha", "customer_tier": "HNI"}}\n'
        '{"profile_id": "p2", "attributes": {"favourite_colour": "teal"}}\n'
        '{"profile_id": "p3", "attributes": {"number_of_schemes": "two"}}\n'
        '{"profile_id": "p4", "attributes": \n'
        '{"profile_id": "p5", "attributes": {"number_of_amcs": 3}}\n'
        '{"profile_id": "p6", "attributes": {"first_name": "Ravi", "total_aum": {"inr": 250000}}}\n'
    )
    code, stdout, stderr = await xsell(gateway.target, key, "profiles", "load", str(profiles), "--batch-size", "2")
    assert code == 1
    assert stdout.splitlines()[1].split() == [str(profiles), "6", "2", "4"]
    refusals = [line for line in stderr.splitlines() if line.startswith(f"{profiles}:")]
    assert refusals == [
        f"{profiles}:4: not valid JSON: Expecting value at column 36",
        f"{profiles}:2: p2: attributes.favourite_colour: attribute 'favourite_colour' is not in the catalog;"
        " declare it with DefineAttributes",
        f"{profiles}:3: p3: attributes.number_of_schemes: attributes.number_of_schemes: expected NUMBER, got a string",
        f"{profiles}:5: p5: attributes.number_of_amcs: attribute 'number_of_amcs' is computed from events and cannot"
        " be set; send transaction_success events instead",
    ], stderr
    assert f"[1/3] {profiles} lines 1-2: 1 stored, 1 refused" in stderr
    stub = segments_grpc.SegmentsServiceStub(gateway.channel())
    for kept in ("p1", "p6"):
        profile = await stub.GetProfile(segments_pb2.GetProfileRequest(profile_id=kept), metadata=(("x-api-key", key),))
        assert profile.profile.attributes["first_name"].string_value in ("Asha", "Ravi")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetProfile(segments_pb2.GetProfileRequest(profile_id="p2"), metadata=(("x-api-key", key),))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_csv_columns_are_typed_by_the_catalog_or_the_header(gateway: RunningGateway, tmp_path: Path) -> None:
    untyped = tmp_path / "crm.csv"
    untyped.write_text("profile_id,first_name,total_aum,number_of_schemes\nc1,Asha,250000,2\nc2,Ravi,,1\n")
    manager = await gateway.add_key(scopes.INGEST, scopes.SEGMENTS_MANAGE)
    code, stdout, stderr = await xsell(gateway.target, manager, "profiles", "load", str(untyped))
    assert code == 0, stderr
    assert stdout.splitlines()[1].split() == [str(untyped), "2", "2", "0"]

    # A feed's key may not read the catalog: untyped columns go as text, and the service says which type it wants.
    feed = await gateway.add_key(scopes.INGEST)
    code, _, stderr = await xsell(gateway.target, feed, "profiles", "load", str(untyped))
    assert code == 1
    assert "note: this key may not read the attribute catalog" in stderr
    assert f"{untyped}:2: c1: number_of_schemes: attributes.number_of_schemes: expected NUMBER, got a string" in stderr
    typed = tmp_path / "typed.csv"
    typed.write_text("profile_id,first_name:string,total_aum:inr,number_of_schemes:number\nc3,Meera,99.5,3\n")
    code, _, stderr = await xsell(gateway.target, feed, "profiles", "load", str(typed))
    assert code == 0 and "note:" not in stderr, stderr

    events = tmp_path / "events.csv"
    events.write_text(
        "event_id,profile_id,name,occur_time,amount:inr,amc\n"
        "e1,c1,transaction_success,2d ago,5000,Axis\n"
        "e2,c1,transaction_success,2001-01-01T00:00:00Z,5000,Axis\n"
    )
    code, _, stderr = await xsell(gateway.target, feed, "events", "load", str(events))
    assert code == 1
    assert f"{events}:3: e2: occur_time: occur_time 2001-01-01T00:00:00+00:00 is older than" in stderr


async def test_maker_checker_by_name_by_id_and_a_replayed_publish(gateway: RunningGateway) -> None:
    maker = await gateway.add_key(scopes.SEGMENTS_MANAGE, scopes.APPROVE, scopes.INGEST, client="maker")
    checker = await gateway.add_key(scopes.APPROVE, client="checker")
    code, _, stderr = await xsell(gateway.target, maker, "profiles", "load", str(DATA / "profiles.jsonl"))
    assert code == 0, stderr
    code, _, stderr = await xsell(gateway.target, maker, "events", "load", str(DATA / "events.jsonl"))
    assert code == 0, stderr
    code, stdout, stderr = await xsell(
        gateway.target, maker, "apply", str(SEGMENTS / "sip_only_investors.yaml"), "--json"
    )
    assert code == 0, stderr
    segment_id = json.loads(stdout)[0]["id"]

    code, stdout, stderr = await xsell(gateway.target, maker, "segments", "submit", "SIP-only investors")
    assert (code, stdout) == (0, f"{segment_id} SUBMITTED version 1 members 0\n"), stderr
    assert f"xsell segments approve {segment_id} --version 1" in stderr

    code, _, stderr = await xsell(gateway.target, maker, "segments", "approve", "SIP-only investors")
    assert code == 1
    assert stderr.startswith("error: FAILED_PRECONDITION: ") and "the author cannot approve" in stderr.splitlines()[0]
    assert "python -m gateway keys create --name approver --scopes approve" in stderr

    code, _, stderr = await xsell(gateway.target, checker, "segments", "approve", "SIP-only investors")
    assert code == 1 and "xsell segments approve seg_... --version N" in stderr, stderr
    code, stdout, stderr = await xsell(
        gateway.target, checker, "segments", "approve", segment_id, "--version", "1", "--note", "ok"
    )
    assert (code, stdout) == (0, f"{segment_id} APPROVED version 1 members 0\n"), stderr

    code, stdout, stderr = await xsell(gateway.target, maker, "segments", "publish", "SIP-only investors")
    assert (code, stdout) == (0, f"{segment_id} PUBLISHED version 1 members 7\n"), stderr
    assert "replayed" not in stderr
    code, stdout, stderr = await xsell(gateway.target, maker, "segments", "publish", segment_id)
    assert (code, stdout) == (0, f"{segment_id} PUBLISHED version 1 members 7\n"), stderr
    assert f"segment {segment_id} is now PUBLISHED" in stderr and stderr.count("replayed: ") == 1

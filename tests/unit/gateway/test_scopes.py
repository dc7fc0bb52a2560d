"""The scope table covers every RPC of the exposed services, derived from the contracts themselves."""

import pytest
from google.protobuf import descriptor_pool

from gateway import scopes
from xsell.attribution.v1 import service_pb2 as _attribution  # noqa: F401 - fills the descriptor pool
from xsell.campaigns.v1 import service_pb2 as _campaigns  # noqa: F401
from xsell.channels.v1 import service_pb2 as _channels  # noqa: F401
from xsell.gateway.v1 import service_pb2 as _gateway  # noqa: F401
from xsell.segments.v1 import service_pb2 as _segments  # noqa: F401

EXPOSED_SERVICES = (*scopes.FORWARDED_SERVICES, scopes.GATEWAY_SERVICE)


def methods_in_contracts(service: str) -> list[str]:
    descriptor = descriptor_pool.Default().FindServiceByName(service)
    return [f"/{service}/{method.name}" for method in descriptor.methods]


@pytest.mark.parametrize("service", EXPOSED_SERVICES)
def test_every_rpc_of_an_exposed_service_has_a_scope_or_is_declared_internal(service: str) -> None:
    unscoped = [
        method
        for method in methods_in_contracts(service)
        if scopes.required_scope(method) is None and method not in scopes.INTERNAL_METHODS
    ]
    assert unscoped == [], f"add these to gateway/scopes.py METHOD_SCOPES (or INTERNAL_METHODS): {unscoped}"


def test_the_table_names_only_rpcs_that_exist() -> None:
    existing = {method for service in EXPOSED_SERVICES for method in methods_in_contracts(service)}
    assert set(scopes.METHOD_SCOPES) - existing == set()
    assert set(scopes.INTERNAL_METHODS) <= existing


def test_internal_rpcs_are_not_exposed() -> None:
    assert "/xsell.segments.v1.SegmentsService/BatchGetProfiles" in scopes.INTERNAL_METHODS
    assert scopes.required_scope("/xsell.segments.v1.SegmentsService/BatchGetProfiles") is None
    assert "/xsell.segments.v1.SegmentsService/BatchGetProfiles" not in scopes.exposed_methods(scopes.SEGMENTS_SERVICE)
    assert scopes.exposed_methods(scopes.CHANNELS_SERVICE) == [
        "/xsell.channels.v1.ChannelsService/GetMessage",
        "/xsell.channels.v1.ChannelsService/ListAmbiguousMessages",
        "/xsell.channels.v1.ChannelsService/ResolveAmbiguousMessage",
        "/xsell.channels.v1.ChannelsService/RecordEngagement",
        "/xsell.channels.v1.ChannelsService/RecordDeliveryReceipt",
    ]


def test_every_required_scope_is_grantable() -> None:
    required = set(scopes.METHOD_SCOPES.values()) - {scopes.AUTHENTICATED}
    assert required <= scopes.GRANTABLE_SCOPES
    assert scopes.AUTHENTICATED not in scopes.GRANTABLE_SCOPES


@pytest.mark.parametrize(
    ("method", "scope"),
    [
        ("/xsell.segments.v1.SegmentsService/UpsertProfiles", "ingest"),
        ("/xsell.channels.v1.ChannelsService/RecordEngagement", "app.events"),
        ("/xsell.channels.v1.ChannelsService/RecordDeliveryReceipt", "app.events"),
        ("/xsell.segments.v1.SegmentsService/GetProfile", "profiles.read"),
        ("/xsell.segments.v1.SegmentsService/CheckMembership", "profiles.read"),
        ("/xsell.segments.v1.SegmentsService/PublishSegment", "segments.manage"),
        ("/xsell.campaigns.v1.CampaignsService/ListOutreaches", "campaigns.manage"),
        ("/xsell.campaigns.v1.CampaignsService/GetOutreach", "crm.leads"),
        ("/xsell.attribution.v1.AttributionService/CreateLead", "crm.leads"),
        ("/xsell.gateway.v1.GatewayService/LookupCampaignRecord", "crm.leads"),
        ("/xsell.attribution.v1.AttributionService/RecordDisbursement", "los.events"),
        ("/xsell.attribution.v1.AttributionService/GetCampaignAttribution", "outreach.read"),
        ("/xsell.channels.v1.ChannelsService/GetMessage", "outreach.read"),
        ("/xsell.campaigns.v1.CampaignsService/ExplainOutreach", "outreach.read"),
        ("/xsell.attribution.v1.AttributionService/GetAttributionReport", "reports.read"),
    ],
)
def test_scopes_follow_who_may_do_what(method: str, scope: str) -> None:
    assert scopes.required_scope(method) == scope


def test_a_los_client_reports_disbursements_but_cannot_read_profiles() -> None:
    los = frozenset({scopes.LOS_EVENTS})
    assert scopes.authorizes(los, scopes.METHOD_SCOPES["/xsell.attribution.v1.AttributionService/RecordDisbursement"])
    assert not scopes.authorizes(los, scopes.METHOD_SCOPES["/xsell.segments.v1.SegmentsService/GetProfile"])


def test_a_dashboard_key_reads_aggregates_and_no_one_persons_record() -> None:
    dashboard = frozenset({scopes.REPORTS_READ})
    readable = {
        method.rsplit("/", 1)[1] for method, scope in scopes.METHOD_SCOPES.items() if scope == scopes.REPORTS_READ
    }
    assert readable == {"GetCampaignReport", "GetLabelReport", "GetAttributionReport", "GetLift"}
    for person in (
        "/xsell.attribution.v1.AttributionService/GetCampaignAttribution",
        "/xsell.campaigns.v1.CampaignsService/ExplainOutreach",
        "/xsell.channels.v1.ChannelsService/GetMessage",
        "/xsell.channels.v1.ChannelsService/ListAmbiguousMessages",
        "/xsell.attribution.v1.AttributionService/ListProfileOutreaches",
        "/xsell.segments.v1.SegmentsService/GetProfile",
    ):
        assert not scopes.authorizes(dashboard, scopes.METHOD_SCOPES[person]), person


def test_admin_grants_every_method_and_any_key_may_ask_who_it_is() -> None:
    assert all(scopes.authorizes(frozenset({scopes.ADMIN}), scope) for scope in scopes.METHOD_SCOPES.values())
    assert scopes.authorizes(frozenset(), scopes.METHOD_SCOPES["/xsell.gateway.v1.GatewayService/GetCaller"])
    assert not scopes.authorizes(frozenset(), scopes.REPORTS_READ)


def test_health_and_reflection_are_public_and_nothing_else_is() -> None:
    assert scopes.is_public("/grpc.health.v1.Health/Check")
    assert scopes.is_public("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not scopes.is_public("/xsell.gateway.v1.GatewayService/GetCaller")
    assert not scopes.is_public("/grpc.health.v1.HealthX/Check")

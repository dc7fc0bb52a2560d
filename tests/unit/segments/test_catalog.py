"""The attribute catalog: definition validation, type checks of profile values, and catalog documents."""

import pytest
from google.protobuf.duration_pb2 import Duration

from services.segments.catalog import Catalog, CatalogFileError, definitions_from_document, validate_definitions
from services.segments.computed import Aggregation
from services.segments.records import validate_profiles
from services.segments.values import Kind, Value
from tests.unit.segments.builders import b, money, n, s, ss
from xsell.segments.v1 import resources_pb2 as r


def definition(name: str, kind: int, **extra: object) -> r.AttributeDefinition:
    return r.AttributeDefinition(name=name, type=kind, **extra)  # type: ignore[arg-type]


AMCS = definition(
    "number_of_amcs",
    r.ATTRIBUTE_TYPE_NUMBER,
    computed=r.ComputedAttribute(
        event_name="transaction_success", aggregation=r.AGGREGATION_DISTINCT_COUNT, property="amc"
    ),
)


def declared() -> Catalog:
    accepted, problems = validate_definitions(
        [
            definition("investment_type", r.ATTRIBUTE_TYPE_STRING, description="SIP, Lumpsum or Both"),
            definition("total_aum", r.ATTRIBUTE_TYPE_MONEY),
            definition("fund_categories", r.ATTRIBUTE_TYPE_STRING_SET),
            definition("has_stp", r.ATTRIBUTE_TYPE_BOOLEAN),
            definition("email", r.ATTRIBUTE_TYPE_STRING, pii=True),
            AMCS,
        ],
        Catalog(),
    )
    assert problems == []
    return Catalog(accepted)


def test_definitions_are_checked_one_by_one_and_good_ones_kept() -> None:
    accepted, problems = validate_definitions(
        [
            definition("age_group", r.ATTRIBUTE_TYPE_STRING),
            definition("Age Group", r.ATTRIBUTE_TYPE_STRING),
            definition("no_type", r.ATTRIBUTE_TYPE_UNSPECIFIED),
            definition(
                "bad_window",
                r.ATTRIBUTE_TYPE_NUMBER,
                computed=r.ComputedAttribute(
                    event_name="session_start", aggregation=r.AGGREGATION_COUNT, window=Duration(seconds=-5)
                ),
            ),
            definition("description", r.ATTRIBUTE_TYPE_STRING, description="x" * 2001),
            # PostgreSQL refuses a NUL in text: it failed the whole batch there.
            definition("nul_description", r.ATTRIBUTE_TYPE_STRING, description="City\x00"),
        ],
        Catalog(),
    )
    assert [d.name for d in accepted] == ["age_group"]
    assert [(p.index, p.field) for p in problems] == [
        (1, "attributes[1].name"),
        (2, "attributes[2].type"),
        (3, "attributes[3].computed.window"),
        (4, "attributes[4].description"),
        (5, "attributes[5].description"),
    ]
    assert "ATTRIBUTE_TYPE_MONEY" in problems[1].reason


def test_a_declared_attribute_keeps_its_type_and_computation_but_not_its_description() -> None:
    catalog = declared()
    amcs_by_count = definition(
        "number_of_amcs",
        r.ATTRIBUTE_TYPE_NUMBER,
        computed=r.ComputedAttribute(event_name="transaction_success", aggregation=r.AGGREGATION_COUNT),
    )
    accepted, problems = validate_definitions(
        [
            definition("total_aum", r.ATTRIBUTE_TYPE_NUMBER),
            amcs_by_count,
            definition("investment_type", r.ATTRIBUTE_TYPE_STRING, description="How the person invests", pii=False),
            AMCS,
            definition(
                "has_stp",
                r.ATTRIBUTE_TYPE_BOOLEAN,
                computed=r.ComputedAttribute(
                    event_name="stp_changed", aggregation=r.AGGREGATION_LAST_VALUE, property="active"
                ),
            ),
        ],
        catalog,
    )
    assert [(p.index, p.field) for p in problems] == [
        (0, "attributes[0].type"),
        (1, "attributes[1].computed"),
        (4, "attributes[4].computed"),
    ]
    assert "declared MONEY and its type cannot change" in problems[0].reason
    assert "computation cannot change" in problems[1].reason
    assert "is set by upserts and its computation cannot change" in problems[2].reason
    assert [d.name for d in accepted] == ["investment_type", "number_of_amcs"]


def test_profile_values_must_be_declared_settable_and_of_the_declared_type() -> None:
    catalog = declared()
    assert catalog.value_problem("investment_type", Value.string("SIP")) is None
    assert catalog.value_problem("total_aum", Value.num(1)) == "attributes.total_aum: expected MONEY, got a number"
    assert catalog.value_problem("has_stp", Value.string("no")) == "attributes.has_stp: expected BOOLEAN, got a string"
    assert catalog.value_problem("city", Value.string("Pune")) == (
        "attribute 'city' is not in the catalog; declare it with DefineAttributes"
    )
    reason = catalog.value_problem("number_of_amcs", Value.num(2))
    assert reason is not None and "is computed from events and cannot be set" in reason


def test_upsert_batches_reject_bad_records_and_keep_the_rest() -> None:
    updates, problems = validate_profiles(
        [
            r.Profile(profile_id="p1", attributes={"investment_type": s("SIP"), "total_aum": money(100)}),
            r.Profile(profile_id="p2", attributes={"investment_type": s("SIP"), "total_aum": n(100)}),
            r.Profile(profile_id="p3", attributes={"city": s("Pune")}),
            r.Profile(profile_id="p4", attributes={"number_of_amcs": n(1)}),
            r.Profile(profile_id="p5", attributes={"fund_categories": ss("Debt"), "has_stp": b(True)}),
        ],
        declared(),
    )
    assert [(p.record_id, p.field) for p in problems] == [
        ("p2", "profiles[1].attributes.total_aum"),
        ("p3", "profiles[2].attributes.city"),
        ("p4", "profiles[3].attributes.number_of_amcs"),
    ]
    assert [u.profile_id for u in updates] == ["p1", "p5"]


def test_the_catalog_finds_computed_attributes_by_the_events_they_aggregate() -> None:
    catalog = declared()
    assert [d.attribute for d in catalog.computed_from(["transaction_success", "session_start"])] == ["number_of_amcs"]
    assert catalog.computed_from(["session_start"]) == []


def test_catalog_documents_accept_short_names_and_windows() -> None:
    [plain, invested] = definitions_from_document(
        {
            "attributes": [
                {"name": "email", "type": "string", "pii": True, "description": "address"},
                {
                    "name": "invested_last_90_days",
                    "type": "money",
                    "computed": {
                        "event_name": "transaction_success",
                        "aggregation": "sum",
                        "property": "amount",
                        "currency_code": "INR",
                        "window": "90d",
                    },
                },
            ]
        }
    )
    assert (plain.type, plain.pii) == (r.ATTRIBUTE_TYPE_STRING, True)
    assert invested.computed.window.seconds == 90 * 24 * 3600
    accepted, problems = validate_definitions([plain, invested], Catalog())
    assert problems == []
    derived = accepted[1].derived
    assert derived is not None and (derived.kind, derived.aggregation) == (Kind.MONEY, Aggregation.SUM)


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"attrs": []}, "'attributes' list"),
        ({"attributes": ["email"]}, "attributes[0]"),
        ({"attributes": [{"name": "x", "type": "number", "computed": {"window": "soon"}}]}, "not a duration"),
        ({"attributes": [{"name": "x", "type": "colour"}]}, "attributes[0] (x)"),
    ],
)
def test_bad_catalog_documents_name_the_entry(document: object, words: str) -> None:
    with pytest.raises(CatalogFileError) as raised:
        definitions_from_document(document)
    assert words in str(raised.value)

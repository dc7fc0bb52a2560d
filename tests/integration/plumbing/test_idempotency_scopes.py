"""Idempotency by (method, request_id, scope) on SQLite and PostgreSQL: a scope finds its own answers and an unscoped
answer to exactly its request (one remembered before request ids had scopes), never another scope's; a batch of many
callers' requests is looked up and remembered each in its own scope."""

from sqlalchemy import MetaData
from sqlalchemy.orm import Session

from plumbing.db import Database
from plumbing.errors import Aborted
from plumbing.idempotency import UNSCOPED, Idempotency, api_key_scope, idempotency_table, request_scope
from xsell.segments.v1 import service_pb2 as api

CRM, LOS = api_key_scope("crm"), api_key_scope("los")
METHOD = "RemoveSuppression"


def _request(request_id: str, profile_id: str) -> api.RemoveSuppressionRequest:
    return api.RemoveSuppressionRequest(request_id=request_id, profile_id=profile_id)


def _answer(text: str) -> api.ListSuppressionsResponse:
    return api.ListSuppressionsResponse(next_page_token=text)


async def test_each_scope_finds_its_own_answers_and_an_unscoped_answer_to_exactly_its_request(
    database_url: str,
) -> None:
    metadata = MetaData()
    idempotency = Idempotency(idempotency_table(metadata))
    db = Database(database_url)
    crm_one, los_one, legacy = _request("1", "crm"), _request("1", "los"), _request("9", "before the upgrade")
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        async with db.transaction() as session:
            # Two callers' request "1" in one batch, and an answer from before scopes (unscoped).
            await idempotency.remember_many(
                session,
                METHOD,
                [(CRM, crm_one, _answer("crm")), (LOS, los_one, _answer("los")), (UNSCOPED, legacy, _answer("old"))],
            )

        def look_up(session: Session) -> dict[tuple[str, str], tuple[str, bytes]]:
            return idempotency.stored_sync(
                session,
                METHOD,
                [
                    (CRM, crm_one),
                    (LOS, los_one),
                    (api_key_scope("third"), crm_one),  # a third key's "1": nobody's answer but its own
                    (CRM, legacy),  # the retry of a request made before the upgrade
                    (LOS, _request("9", "another request")),  # another request under that id: not the LOS's
                ],
            )

        stored = await db.run_in_transaction(look_up)
        assert sorted(stored) == [(CRM, "1"), (CRM, "9"), (LOS, "1")]
        assert idempotency.answer(METHOD, crm_one, stored[CRM, "1"], api.ListSuppressionsResponse) == _answer("crm")
        assert idempotency.answer(METHOD, los_one, stored[LOS, "1"], api.ListSuppressionsResponse) == _answer("los")
        assert idempotency.answer(METHOD, legacy, stored[CRM, "9"], api.ListSuppressionsResponse) == _answer("old")

        async with db.transaction() as session:
            many = await idempotency.previous_many(
                session,
                METHOD,
                [(LOS, _request("1", "changed")), (UNSCOPED, _request("9", "changed"))],
                type(_answer("")),
            )
        # Within a scope (the unscoped one too), a request_id reused for another request is still refused.
        assert sorted(many) == [(UNSCOPED, "9"), (LOS, "1")]
        assert all(isinstance(answer, Aborted) for answer in many.values())

        # The single-call methods take the call's scope from request_scope, as the gRPC server sets it.
        token = request_scope.set(LOS)
        try:
            async with db.transaction() as session:
                assert await idempotency.previous(session, METHOD, los_one, api.ListSuppressionsResponse) == _answer(
                    "los"
                )
                assert await idempotency.previous(session, METHOD, _request("2", "los"), type(_answer(""))) is None
                await idempotency.remember(session, METHOD, _request("2", "los"), _answer("los 2"))
        finally:
            request_scope.reset(token)
        async with db.transaction() as session:
            assert await idempotency.previous(session, METHOD, _request("2", "los"), type(_answer(""))) is None
    finally:
        await db.dispose()

"""The revenue dashboard on the gateway's HTTP side: a static page and one JSON endpoint over attribution's views."""

import asyncio
from pathlib import Path
from typing import Any

import grpc
import structlog
from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from gateway import scopes
from gateway.auth import AuthenticationFailed, Authenticator
from plumbing.grpc_server import CLIENT_METADATA
from xsell.attribution.v1 import resources_pb2 as attribution_resources
from xsell.attribution.v1 import service_pb2 as attribution_pb2
from xsell.attribution.v1 import service_pb2_grpc as attribution_grpc

log = structlog.get_logger(__name__)

STATIC = Path(__file__).parent / "static"
# The page runs only its own files: no inline script, no third-party origin, nothing framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_BAD_REQUEST_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE)


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=SECURITY_HEADERS)


def _figures(f: attribution_resources.ReportFigures) -> dict[str, Any]:
    return {
        "sent": f.sent,
        "conversions": f.conversions,
        "conversion_rate": f.conversion_rate,
        "disbursed_paise": f.disbursed_amount.minor_units,
        "lifetime_paise": f.lifetime_revenue.minor_units,
        "year1_paise": f.year1_revenue.minor_units,
        "cost_paise": f.cost.minor_units,
        "romi": f.romi,
        "cost_per_conversion_paise": f.cost_per_conversion.minor_units,
        "currency": f.disbursed_amount.currency_code or "INR",
        # Every step of the contract's funnel, in its order (sent … disbursed, activated).
        "funnel": {field.name: getattr(f.funnel, field.name) for field in f.funnel.DESCRIPTOR.fields},
    }


class Dashboard:
    """Serves /dashboard (the page) and /dashboard/api/report (its data).

    The page holds no secret: a person enters an API key with the reports.read scope once per browser
    session (kept in sessionStorage), and the page sends it in X-Api-Key on each data call; the gateway
    checks it like a gRPC call's key. No cookie, so no cross-site request can read or use it.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        attribution: attribution_grpc.AttributionServiceStub,
        tracer: trace.Tracer,
        timeout_seconds: float,
    ) -> None:
        self._authenticator = authenticator
        self._attribution = attribution
        self._tracer = tracer
        self._timeout = timeout_seconds
        # Read once at start: only the files that ship next to the page, so no path can climb out of the folder.
        self._files = {path.name: path for path in STATIC.iterdir() if path.is_file()}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/dashboard", self._page)
        app.router.add_get("/dashboard/", self._page)
        app.router.add_get("/dashboard/static/{name}", self._static)
        app.router.add_get("/dashboard/api/report", self._report)

    async def _page(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "dashboard.html", headers=SECURITY_HEADERS)

    async def _static(self, request: web.Request) -> web.StreamResponse:
        path = self._files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers=SECURITY_HEADERS)

    async def _report(self, request: web.Request) -> web.StreamResponse:
        try:
            caller = await self._authenticator.authenticate(request.headers.get("X-Api-Key", "").strip() or None)
        except AuthenticationFailed as error:
            return _json_error(401, str(error))
        if not scopes.authorizes(caller.scopes, scopes.REPORTS_READ):
            log.info("dashboard_forbidden", key_id=caller.key_id)
            return _json_error(403, f"this API key lacks the scope {scopes.REPORTS_READ!r} the dashboard needs")
        query = request.query
        report_filter = attribution_pb2.ReportFilter(
            start_date=query.get("start", ""),
            end_date=query.get("end", ""),
            labels=[label for label in query.getall("label", []) if label],
            trigger_code=query.get("trigger", ""),
        )
        everything = attribution_pb2.ReportFilter(start_date=report_filter.start_date, end_date=report_filter.end_date)
        metadata = ((CLIENT_METADATA, caller.client_name),)
        with self._tracer.start_as_current_span("gateway dashboard report", kind=SpanKind.SERVER):
            try:
                by_trigger, by_label, lift = await asyncio.gather(
                    self._attribution.GetAttributionReport(
                        attribution_pb2.GetAttributionReportRequest(
                            filter=report_filter, dimension=attribution_resources.REPORT_DIMENSION_TRIGGER
                        ),
                        timeout=self._timeout,
                        metadata=metadata,
                    ),
                    # Every label of the period, whatever is selected, so the filter can offer them all.
                    self._attribution.GetAttributionReport(
                        attribution_pb2.GetAttributionReportRequest(
                            filter=everything, dimension=attribution_resources.REPORT_DIMENSION_LABEL
                        ),
                        timeout=self._timeout,
                        metadata=metadata,
                    ),
                    self._attribution.GetLift(
                        attribution_pb2.GetLiftRequest(filter=report_filter), timeout=self._timeout, metadata=metadata
                    ),
                )
            except grpc.aio.AioRpcError as error:
                if error.code() in _BAD_REQUEST_CODES:
                    return _json_error(400, error.details() or "the filter is not valid")
                log.warning("dashboard_report_failed", code=error.code().name, detail=error.details())
                return _json_error(503, "attribution is unavailable right now; try again shortly")
        body = {
            "utc_offset": by_trigger.utc_offset,
            "total": _figures(by_trigger.total),
            "triggers": [{"key": row.key, **_figures(row.figures)} for row in by_trigger.rows],
            "labels": sorted(row.key for row in by_label.rows),
            "trend": [{"date": point.date, **_figures(point.figures)} for point in by_trigger.trend],
            "lag": [
                {"min_days": b.min_days, "max_days": b.max_days, "conversions": b.conversions} for b in by_trigger.lag
            ],
            "lift": {
                "treated": lift.lift.treated,
                "held_out": lift.lift.held_out,
                "treated_rate": lift.lift.treated_rate,
                "held_out_rate": lift.lift.held_out_rate,
                "lift": lift.lift.lift,
                "low": lift.lift.lift_low,
                "high": lift.lift.lift_high,
                "conclusive": lift.lift.conclusive,
                "statement": lift.lift.statement,
            },
        }
        return web.json_response(body, headers=SECURITY_HEADERS)

"""python -m services.segments: serve the segments service until SIGTERM."""

from opentelemetry.sdk.trace import TracerProvider

from plumbing.runtime import ServiceProcess, run_service
from plumbing.settings import ServiceSettings
from services.segments.app import build
from services.segments.settings import SegmentsSettings


async def _build(settings: ServiceSettings, provider: TracerProvider) -> ServiceProcess:
    assert isinstance(settings, SegmentsSettings)
    return await build(settings, provider)


if __name__ == "__main__":
    run_service("segments", SegmentsSettings(), _build)  # type: ignore[call-arg]

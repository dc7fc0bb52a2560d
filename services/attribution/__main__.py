"""python -m services.attribution: read settings, build, serve until SIGTERM."""

from opentelemetry.sdk.trace import TracerProvider

from plumbing.runtime import ServiceProcess, run_service
from plumbing.settings import ServiceSettings
from services.attribution.app import build
from services.attribution.settings import AttributionSettings


def main() -> None:
    # Every field has a default; mypy without the pydantic plugin cannot see the positional ones.
    settings = AttributionSettings()  # type: ignore[call-arg]

    async def build_attribution(_: ServiceSettings, provider: TracerProvider) -> ServiceProcess:
        return await build(settings, provider)

    run_service("attribution", settings, build_attribution)


if __name__ == "__main__":
    main()

"""python -m services.campaigns: read settings, build, serve until SIGTERM."""

from opentelemetry.sdk.trace import TracerProvider

from plumbing.runtime import ServiceProcess, run_service
from plumbing.settings import ServiceSettings
from services.campaigns.app import build
from services.campaigns.settings import CampaignsSettings


def main() -> None:
    # Every field has a default; mypy without the pydantic plugin cannot see them.
    settings = CampaignsSettings()  # type: ignore[call-arg]

    async def build_campaigns(_: ServiceSettings, provider: TracerProvider) -> ServiceProcess:
        return await build(settings, provider)

    run_service("campaigns", settings, build_campaigns)


if __name__ == "__main__":
    main()

"""python -m services.channels: read settings, build, serve until SIGTERM."""

from opentelemetry.sdk.trace import TracerProvider

from plumbing.runtime import ServiceProcess, run_service
from plumbing.settings import ServiceSettings
from services.channels.app import build
from services.channels.settings import ChannelsSettings


def main() -> None:
    settings = ChannelsSettings()  # type: ignore[call-arg]  # mypy runs without the pydantic plugin: env fills the fields

    async def build_channels(_: ServiceSettings, provider: TracerProvider) -> ServiceProcess:
        return await build(settings, provider)

    run_service("channels", settings, build_channels)


if __name__ == "__main__":
    main()

"""python -m services.channels: serve the channels service until SIGTERM."""

from plumbing.runtime import run_service
from services.channels.app import build
from services.channels.settings import ChannelsSettings

if __name__ == "__main__":
    run_service("channels", ChannelsSettings(), build)

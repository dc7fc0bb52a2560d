"""python -m services.attribution: serve the attribution service until SIGTERM."""

from plumbing.runtime import run_service
from services.attribution.app import build
from services.attribution.settings import AttributionSettings

if __name__ == "__main__":
    run_service("attribution", AttributionSettings(), build)

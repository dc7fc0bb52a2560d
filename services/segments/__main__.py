"""python -m services.segments: serve the segments service until SIGTERM."""

from plumbing.runtime import run_service
from services.segments.app import build
from services.segments.settings import SegmentsSettings

if __name__ == "__main__":
    run_service("segments", SegmentsSettings(), build)

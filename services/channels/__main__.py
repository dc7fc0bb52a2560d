"""python -m services.channels: serve the channels service until SIGTERM."""

import gc

from plumbing.runtime import run_service
from services.channels.app import build
from services.channels.settings import ChannelsSettings

if __name__ == "__main__":
    # As campaigns does. What the imports made lives as long as the process: frozen, a full collection no longer walks
    # it. A message's objects are nearly all freed by reference counting, but with a young generation collected every
    # 700 allocations those still alive (the ~10 ms of a hand-over, a span queued for export) were promoted, and a full
    # collection of 45-90 ms ran every ~1.4 s at 1k/s, each a window of requests late by as much.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    run_service("channels", ChannelsSettings(), build)

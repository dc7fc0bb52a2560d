"""python -m services.campaigns: serve the campaigns service until SIGTERM."""

import gc

from plumbing.runtime import run_service
from services.campaigns.app import build
from services.campaigns.settings import CampaignsSettings

if __name__ == "__main__":
    # What the imports made lives as long as the process: frozen, the collector's full passes no longer walk it
    # each time a release's or a trigger batch's young objects survive a collection. A page allocates tens of
    # thousands of objects, nearly all freed by reference counting: collecting the young generation every 20,000
    # allocations instead of 700 spares most passes (the service makes few reference cycles).
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    run_service("campaigns", CampaignsSettings(), build)

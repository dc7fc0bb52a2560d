"""python -m services.campaigns: serve the campaigns service until SIGTERM."""

import gc

from plumbing.runtime import run_service
from services.campaigns.app import build
from services.campaigns.settings import CampaignsSettings

if __name__ == "__main__":
    # What the imports made lives as long as the process: frozen, the collector's full passes no longer walk it
    # each time a release's or a trigger batch's young objects survive a collection.
    gc.freeze()
    run_service("campaigns", CampaignsSettings(), build)

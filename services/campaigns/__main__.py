"""python -m services.campaigns: serve the campaigns service until SIGTERM."""

from plumbing.runtime import run_service
from services.campaigns.app import build
from services.campaigns.settings import CampaignsSettings

if __name__ == "__main__":
    run_service("campaigns", CampaignsSettings(), build)

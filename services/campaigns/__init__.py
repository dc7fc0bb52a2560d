"""Campaigns: campaign definitions, their launches, and the outreaches (campaign IDs) they create."""

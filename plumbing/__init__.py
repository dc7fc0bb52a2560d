"""Shared plumbing of every xsell process; it knows nothing about segments, campaigns, channels or attribution."""

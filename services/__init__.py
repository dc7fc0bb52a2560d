"""The four xsell services: segments, campaigns, channels and attribution."""

"""The gateway: the one public edge of xsell."""

"""Channels: delivers each outreach exactly once and records the engagement it produces."""

"""Adapters every service shares: settings, the NATS connection and stream, logging, local servers."""

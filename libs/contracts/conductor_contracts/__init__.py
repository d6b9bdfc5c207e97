"""The contract every SCNS-Conductor service shares: events, subjects, HTTP bodies, parsers."""

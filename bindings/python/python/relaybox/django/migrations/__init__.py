"""The relaybox tables as Django migrations."""

"""``relaybox_relay`` and ``relaybox_consumer``."""

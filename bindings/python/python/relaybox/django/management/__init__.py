"""Management commands of relaybox.django."""

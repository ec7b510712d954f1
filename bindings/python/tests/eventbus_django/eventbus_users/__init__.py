"""The users app of the event bus tests: the seed's model, events, tasks and subscriber."""

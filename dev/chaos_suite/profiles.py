"""The two forms of the suite: ``--short`` (CI, about 3 minutes) and full (the issue's figures)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    """Load, fault timing and limits of one form of the suite."""

    name: str
    rate: float  # steady load of the relay-kill, pg-restart and consumer-kill scenarios, msg/s
    drain_timeout: float  # longest wait for the outbox (or the handler table) to drain
    # relay-kill
    kill_backlog: int  # messages per producer thread committed before the relays start
    kill_duration: float  # seconds of killing (one kill every kill_every, the first after 1 s)
    kill_every: float
    # broker-outage
    outage_rate: float
    outage_before: float
    outage: float  # seconds between the broker's stop and its start (both take a few more)
    outage_after: float
    # pg-restart
    pg_duration: float
    pg_restarts: tuple[float, ...]  # seconds into the load
    # consumer-kill
    consumer_duration: float
    consumer_kill_every: float
    consumer_properties: dict[str, str] = field(default_factory=dict)
    # poison-client, poison-broker
    poison_rate: float = 100.0
    poison_duration: float = 8.0


SHORT = Profile(
    name="short",
    rate=300,
    drain_timeout=90,
    kill_backlog=250,
    kill_duration=9,
    kill_every=3,
    outage_rate=300,
    outage_before=4,
    outage=4,
    outage_after=4,
    pg_duration=10,
    pg_restarts=(3.0, 7.0),
    consumer_duration=10,
    consumer_kill_every=3,
    # A consumer killed with SIGKILL holds its partitions until its session
    # times out; the short form uses the broker's minimum so that its kills
    # fit in CI's time. The full form keeps relaybox's defaults
    # (docs/kafka.md) and reports what they cost.
    consumer_properties={"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"},
    poison_rate=100,
    poison_duration=8,
)

FULL = Profile(
    name="full",
    rate=500,
    drain_timeout=300,
    kill_backlog=2500,
    kill_duration=60,
    kill_every=5,
    outage_rate=500,
    outage_before=10,
    outage=60,
    outage_after=20,
    pg_duration=60,
    pg_restarts=(15.0, 40.0),
    consumer_duration=40,
    consumer_kill_every=8,
    consumer_properties={},
    poison_rate=200,
    poison_duration=20,
)

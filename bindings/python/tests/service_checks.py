"""Fixtures for the services of the event bus and broker tests: Redis, moto and RabbitMQ.

Each fails (never skips) with a hint when its variable is unset or nothing answers.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

HINT = 'start it with `dev/services start {service} && eval "$(dev/services env)"`'


def _reachable(variable: str, service: str, default_port: int) -> str:
    value = os.environ.get(variable, "").strip()
    if not value:
        pytest.fail(
            f"{variable} is not set: these tests use the real {service}; "
            + HINT.format(service=service)
        )
    parts = urlsplit(value)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        pytest.fail(
            f"nothing answers at {host}:{port} ({variable}, {exc}); " + HINT.format(service=service)
        )
    return value


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the Redis server of ``dev/services`` (``REDIS_URL``)."""
    return _reachable("REDIS_URL", "redis", 6379)


@pytest.fixture(scope="session")
def aws_endpoint() -> str:
    """Endpoint of the moto server of ``dev/services`` (``RELAYBOX_AWS_ENDPOINT_URL``)."""
    return _reachable("RELAYBOX_AWS_ENDPOINT_URL", "moto", 5000)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """URL of the RabbitMQ server of ``dev/services`` (``RABBITMQ_URL``)."""
    return _reachable("RABBITMQ_URL", "rabbitmq", 5672)

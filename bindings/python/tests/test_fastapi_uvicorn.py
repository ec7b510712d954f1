"""A FastAPI application under a real uvicorn process: ``@event`` on a route writes the
event in the request's SQLAlchemy ``AsyncSession``, so the event exists exactly when the
order does. A request that fails after writing both leaves neither; a good one leaves the
order, and its event reaches a consumer once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import count, wait_for
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

import relaybox
import relaybox.sqlalchemy

TESTS = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``python -m uvicorn fastapi_app.orders_app:app`` on a port of its own."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "fastapi_app.orders_app:app",
                    "--app-dir",
                    str(TESTS),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text()

    def answers(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"uvicorn exited with {self.proc.returncode}:\n{self.output()}")
        try:
            return httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


@pytest.fixture
def orders(pg: psycopg.Connection[Any], prefix: str, outbox: relaybox.Outbox) -> str:
    """The business table of the app (dropped with the prefix)."""
    table = f"{prefix}orders"
    pg.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, item text NOT NULL)")
    pg.execute(f"CREATE TABLE {prefix}shipments (order_id int NOT NULL, message_id uuid)")
    return table


@pytest.fixture
def topic() -> str:
    return f"orders-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def server(pg_url: str, prefix: str, orders: str, topic: str, tmp_path: Path) -> Iterator[Server]:
    env = dict(os.environ)
    env.update(
        RELAYBOX_DATABASE_URL=pg_url,
        RELAYBOX_TABLE_PREFIX=prefix,
        ORDERS_TABLE=orders,
        ORDERS_TOPIC=topic,
    )
    app = Server(env, tmp_path / "uvicorn.log")
    try:
        wait_for("uvicorn to answer", app.answers)
        yield app
    finally:
        if app.proc.poll() is None:
            app.proc.kill()
            app.proc.wait()


def scalar(pg: psycopg.Connection[Any], sql: str, *params: Any) -> int:
    row = pg.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def test_an_event_commits_with_the_requests_rows(
    server: Server,
    outbox: relaybox.Outbox,
    pg: psycopg.Connection[Any],
    pg_url: str,
    prefix: str,
    orders: str,
    topic: str,
) -> None:
    calls: list[str] = []
    lock = threading.Lock()

    def ship(message: relaybox.Message, session: Session) -> None:
        with lock:
            calls.append(message.id)
        session.execute(
            text(f"INSERT INTO {prefix}shipments (order_id, message_id) VALUES (:o, :m)"),
            {"o": message.json()["data"]["id"], "m": message.id},
        )

    engine = create_engine(pg_url.replace("postgres://", "postgresql+psycopg://", 1))
    sessions = sessionmaker(engine)

    def consumer() -> relaybox.sqlalchemy.Consumer:
        return relaybox.sqlalchemy.Consumer(
            outbox, topic, ship, group="shipping", sessionmaker=sessions
        )

    try:
        with relaybox.Relay(outbox, poll_interval=0.2), httpx.Client(base_url=server.url) as http:
            with consumer() as c:
                declined = http.post(
                    "/checkout", json={"id": 1, "item": "lamp", "card": "declined"}
                )
                assert declined.status_code == 500, declined.text
                wait_for(
                    "uvicorn to log the route's exception",
                    lambda: "PaymentDeclined: card declined for order 1" in server.output(),
                )
                assert count(pg, orders) == 0
                assert scalar(pg, f"SELECT count(*) FROM {prefix}outbox") == 0

                placed = http.post("/orders", json={"id": 2, "item": "desk"})
                assert placed.status_code == 200, placed.text
                assert placed.json() == {"id": 2, "item": "desk"}
                # The session committed before the response was sent.
                assert pg.execute(f"SELECT id, item FROM {orders}").fetchall() == [(2, "desk")]

                wait_for("the order's event handled", lambda: c.stats()["processed"] == 1)
                wait_for(
                    "the relay to empty the outbox",
                    lambda: scalar(pg, f"SELECT count(*) FROM {prefix}outbox") == 0,
                )
            # Everything the relay ever published for the topic: the good order's event only.
            published = pg.execute(
                f"SELECT id::text, type, key, payload FROM {prefix}log WHERE topic = %s", (topic,)
            ).fetchall()
            assert len(published) == 1
            message_id, kind, key, payload = published[0]
            assert (kind, key) == ("order.placed", "2")
            body = json.loads(bytes(payload))
            assert body["data"] == {"id": 2, "item": "desk"} and body["source"] == "orders-api"
            assert calls == [message_id]
            assert pg.execute(
                f"SELECT order_id, message_id::text FROM {prefix}shipments"
            ).fetchall() == [(2, message_id)]

            # The group's position forgotten: the event comes again and the inbox skips it.
            pg.execute(f"DELETE FROM {prefix}positions WHERE consumer_group = 'shipping'")
            with consumer() as again:
                wait_for("the redelivery skipped", lambda: again.stats()["duplicates"] == 1)
            assert again.stats()["processed"] == 0
            assert calls == [message_id]
            assert count(pg, f"{prefix}shipments") == 1
            assert scalar(pg, f"SELECT count(*) FROM {prefix}inbox") == 1
    finally:
        engine.dispose()

    # uvicorn shuts down gracefully (lifespan shutdown included), then re-raises SIGTERM
    # so that its exit status names the signal.
    assert server.terminate() in (0, -signal.SIGTERM), server.output()
    assert "Application shutdown complete." in server.output()
    assert "Finished server process" in server.output()

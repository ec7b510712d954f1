"""A relaybox.sqlalchemy.Consumer in a process of its own that dies by SIGKILL right
after the commit of one marked message, before the core can acknowledge it.

Usage: ``python sa_killed_consumer.py SETTINGS_JSON`` with ``url`` (PostgreSQL),
``prefix`` (outbox tables and the ``{prefix}handled`` table), ``topic``, ``group``,
``kill`` (the message id to die after), ``hold`` (seconds to wait between that commit
and the kill) and ``kafka`` (bootstrap servers, or null for the database transport).
The handler adds one ``handled`` row per message through the ORM session; the
session's ``after_commit`` event kills the process for the marked message: the inbox
row and the handler's row are committed, the delivery is not acknowledged. The hold
gives a consumer that acknowledged too early the time to have its acknowledgement
recorded (other lanes go on meanwhile).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import relaybox
import relaybox.sqlalchemy as rsa


def main() -> None:
    settings: dict[str, Any] = json.loads(sys.argv[1])
    prefix: str = settings["prefix"]
    kill: str = settings["kill"]

    class Base(DeclarativeBase):
        pass

    class Handled(Base):
        __tablename__ = f"{prefix}handled"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
        message_id: Mapped[str]
        key: Mapped[str]
        seq: Mapped[int]

    engine = create_engine(settings["url"].replace("postgres://", "postgresql+psycopg://", 1))
    sessions = sessionmaker(engine)

    @event.listens_for(sessions, "after_commit")
    def die_after_the_marked_commit(session: Session) -> None:
        if session.info.get("kill"):
            time.sleep(settings["hold"])
            os.kill(os.getpid(), signal.SIGKILL)

    def handle(message: relaybox.Message, session: Session) -> None:
        body = message.json()
        session.add(Handled(message_id=message.id, key=message.key or "", seq=body["seq"]))
        if message.id == kill:
            session.info["kill"] = True

    transport: relaybox.Transport = None
    if settings["kafka"]:
        transport = relaybox.Kafka(
            bootstrap_servers=settings["kafka"],
            consumer_properties={"session.timeout.ms": "6000", "heartbeat.interval.ms": "2000"},
        )
    outbox = relaybox.Outbox(settings["url"], table_prefix=prefix)
    consumer = rsa.Consumer(
        outbox,
        settings["topic"],
        handle,
        group=settings["group"],
        sessionmaker=sessions,
        transport=transport,
        poll_interval=0.05,
    )
    consumer.start()
    print("consuming", file=sys.stderr, flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()

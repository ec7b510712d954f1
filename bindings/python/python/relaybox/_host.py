"""The producer side of the host-transaction protocol, shared by the driver integrations.

The core generates the outbox INSERT (one statement per batch of up to 1000
messages) and the wake-up; :mod:`relaybox.sqlalchemy`, :mod:`relaybox.asyncpg`
and :mod:`relaybox.psycopg` and :mod:`relaybox.django` run them on the application's own connection,
inside its transaction. This module builds those statements and checks that
the application's connection reaches the outbox's database (internal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional

from ._spec import message_spec
from .errors import ConfigError
from .outbox import AnyOutbox

if TYPE_CHECKING:
    from ._spec import EnqueueOptions

__all__ = [
    "IDENTITY_SQL",
    "Statement",
    "check_same",
    "run_statements",
    "schema_statements",
    "schema_tables",
    "statements",
]

Statement = tuple[str, Any, list[str], Optional[str]]
"""``(sql, params, message_ids, wake)``: params a dict for named styles, else a tuple."""

IDENTITY_SQL = (
    "SELECT current_database(), "
    "CAST(CAST(EXTRACT(EPOCH FROM pg_postmaster_start_time()) * 1000000 AS bigint) AS text)"
)
"""What identifies a PostgreSQL database: its name and its server's start time."""


def statements(
    outbox: AnyOutbox, messages: Iterable[Mapping[str, Any]], placeholders: str, integration: str
) -> list[Statement]:
    """The INSERTs (and wake-ups) writing ``messages``; all are validated first."""
    if outbox.dialect != "postgres":
        raise ConfigError(
            f"{integration} writes into a PostgreSQL outbox; this outbox is on {outbox.dialect}"
        )
    specs = [message_spec(**m) for m in messages]
    return outbox._store.insert_batch_statement(specs, placeholders)


def one(topic: str, payload: Any, options: EnqueueOptions) -> list[dict[str, Any]]:
    """The single message of an ``enqueue`` call, as a batch of one."""
    return [{"topic": topic, "payload": payload, **options}]


_identities: dict[int, tuple[Any, tuple[Any, ...]]] = {}


def outbox_identity(outbox: AnyOutbox) -> tuple[Any, ...]:
    """The outbox database's identity (cached per outbox)."""
    store = outbox._store
    cached = _identities.get(id(store))
    if cached is not None and cached[0] is store:
        return cached[1]
    tx = store.begin()
    try:
        row = tx.query(IDENTITY_SQL)[0]
    finally:
        tx.rollback()
    identity = tuple(row.values())
    _identities[id(store)] = (store, identity)
    return identity


async def outbox_identity_async(outbox: AnyOutbox) -> tuple[Any, ...]:
    """:func:`outbox_identity` without blocking the event loop."""
    store = outbox._store
    cached = _identities.get(id(store))
    if cached is not None and cached[0] is store:
        return cached[1]
    tx = await store.begin_async()
    try:
        rows = await tx.query_async(IDENTITY_SQL)
    finally:
        await tx.rollback_async()
    identity = tuple(rows[0].values())
    _identities[id(store)] = (store, identity)
    return identity


def check_same(host: tuple[Any, ...], outbox_id: tuple[Any, ...], integration: str) -> None:
    """Raise :class:`~relaybox.ConfigError` when the two identities differ."""
    if tuple(str(v) for v in host) != tuple(str(v) for v in outbox_id):
        raise ConfigError(
            f"{integration}: the connection is to database {host[0]!r}, not to the outbox's "
            f"database {outbox_id[0]!r} (or to another server): the event would not commit "
            "with your rows. Pass a session or connection of the outbox's database."
        )


def run_statements(execute: Callable[[str, Any], Any], planned: list[Statement]) -> list[str]:
    """Run ``planned`` through ``execute(sql, params)``, then the wake-up (params ``None``).

    For DB-API style cursors (psycopg, Django): returns the ids of the messages written.
    """
    ids: list[str] = []
    for sql, params, message_ids, _wake in planned:
        execute(sql, params)
        ids.extend(message_ids)
    wake = planned[-1][3] if planned else None
    if wake is not None:
        execute(wake, None)
    return ids


def schema_statements(sql: str) -> list[str]:
    """The core's schema SQL split one statement a string (drivers run one per call).

    Comment lines are dropped; the core's schema has no ``;`` inside literals or bodies.
    """
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


_CREATE_TABLE = "CREATE TABLE IF NOT EXISTS "


def schema_tables(sql: str) -> list[str]:
    """The tables that the core's schema SQL creates, in creation order."""
    return [
        s[len(_CREATE_TABLE) :].split()[0].split("(")[0]
        for s in schema_statements(sql)
        if s.startswith(_CREATE_TABLE)
    ]

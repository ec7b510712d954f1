"""An orders API: FastAPI, an SQLAlchemy ``AsyncSession`` per request, ``@event`` on a route.

Served by a real uvicorn process in ``test_fastapi_uvicorn.py``; configured by the
environment: ``RELAYBOX_DATABASE_URL`` (the PostgreSQL database of the orders and the
outbox), ``RELAYBOX_TABLE_PREFIX`` (relaybox's tables), ``ORDERS_TABLE`` and
``ORDERS_TOPIC``.

``POST /orders`` writes an order and, through ``@event``, its ``order.placed`` event
in the request's session; the session commits both when the route returns.
``POST /checkout`` does the same and then charges the card: a declined card raises
after both writes, the request answers 500 and the session rolls both back.
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations through
# the @event wrapper, whose module could not resolve names of this one.
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from relaybox.messaging import close_messaging, configure_messaging, event

DATABASE_URL = os.environ["RELAYBOX_DATABASE_URL"]
ORDERS = os.environ.get("ORDERS_TABLE", "orders")
TOPIC = os.environ.get("ORDERS_TOPIC", "orders")

engine = create_async_engine(DATABASE_URL.replace("postgres://", "postgresql+asyncpg://", 1))
Sessions = async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Configure the messaging façade for the process; release it at shutdown."""
    configure_messaging(broker="database", database_url=DATABASE_URL, source="orders-api")
    yield
    close_messaging()
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


async def session() -> AsyncIterator[AsyncSession]:
    """The request's session: committed when the route returns, rolled back if it raises."""
    async with Sessions.begin() as db:
        yield db


# scope="function": the commit runs before the response is sent, so a 200 means committed.
Db = Annotated[AsyncSession, Depends(session, scope="function")]


class OrderIn(BaseModel):
    """The body of ``POST /orders`` and ``POST /checkout``."""

    id: int
    item: str
    card: str = "valid"


class PaymentDeclined(Exception):
    """The card was refused."""


@app.post("/orders")
@event("order.placed", topic=TOPIC, key_field="id")
async def place_order(order: OrderIn, db: Db) -> dict[str, Any]:
    """Write the order; ``@event`` writes ``order.placed`` in the same session."""
    await db.execute(
        text(f"INSERT INTO {ORDERS} (id, item) VALUES (:id, :item)"),
        {"id": order.id, "item": order.item},
    )
    return {"id": order.id, "item": order.item}


async def charge(order: OrderIn) -> None:
    """Charge the order's card; ``"declined"`` is refused."""
    if order.card == "declined":
        raise PaymentDeclined(f"card declined for order {order.id}")


@app.post("/checkout")
async def checkout(order: OrderIn, db: Db) -> dict[str, Any]:
    """Place the order (row and event), then charge: a refusal rolls both back."""
    placed: dict[str, Any] = await place_order(order, db)
    await charge(order)
    return placed


@app.get("/health")
async def health() -> dict[str, str]:
    """Answers once the application has started."""
    return {"status": "ok"}

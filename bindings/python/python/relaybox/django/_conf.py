"""The ``RELAYBOX`` setting and the process's outbox (internal)."""

from __future__ import annotations

import threading
from typing import Any, Optional
from urllib.parse import quote

from django.conf import settings
from django.db import connections

from ..errors import ConfigError
from ..outbox import Outbox
from ..transport import Transport

_KEYS = {"URL", "DATABASE", "TABLE_PREFIX", "PARTITIONS", "TRANSPORT", "OPTIONS", "RELAY"}
DEFAULT_PREFIX = "relaybox_"


def conf() -> dict[str, Any]:
    """``settings.RELAYBOX`` checked: unknown keys are a :class:`ConfigError`."""
    value = getattr(settings, "RELAYBOX", None) or {}
    if not isinstance(value, dict):
        raise ConfigError("settings.RELAYBOX must be a dict")
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise ConfigError(
            f"settings.RELAYBOX: unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_KEYS))}"
        )
    return dict(value)


def alias() -> str:
    """The Django database alias that holds the relaybox tables (``DATABASE``, default)."""
    return str(conf().get("DATABASE") or "default")


def table_prefix() -> str:
    """``TABLE_PREFIX`` (default ``relaybox_``)."""
    return str(conf().get("TABLE_PREFIX") or DEFAULT_PREFIX)


def partitions() -> int:
    """``PARTITIONS`` (default 16, the core's)."""
    return int(conf().get("PARTITIONS") or 16)


def transport() -> Transport:
    """``TRANSPORT``: ``"database"`` (default), ``"kafka"`` or a :class:`relaybox.Kafka`."""
    value: Transport = conf().get("TRANSPORT") or "database"
    return value


def relay_settings() -> dict[str, Any]:
    """``RELAY``: keyword arguments of :class:`relaybox.Relay` for ``relaybox_relay``."""
    return dict(conf().get("RELAY") or {})


def database_url(using: str) -> str:
    """A ``postgres://`` URL for the Django database ``using`` (PostgreSQL only)."""
    db = connections.databases[using]
    engine = str(db.get("ENGINE", ""))
    if "postgresql" not in engine:
        raise ConfigError(
            f"relaybox.django: DATABASES[{using!r}] uses {engine or 'no ENGINE'}; the outbox "
            "needs PostgreSQL (or set RELAYBOX['URL'])"
        )
    user = quote(str(db.get("USER") or ""), safe="")
    password = quote(str(db.get("PASSWORD") or ""), safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = str(db.get("HOST") or "")
    port = str(db.get("PORT") or "")
    name = quote(str(db.get("NAME") or ""), safe="")
    if host.startswith("/"):  # a Unix socket directory
        query = f"?host={quote(host, safe='')}" + (f"&port={port}" if port else "")
        return f"postgres://{auth}/{name}{query}"
    netloc = (host or "localhost") + (f":{port}" if port else "")
    return f"postgres://{auth}{netloc}/{name}"


_lock = threading.Lock()
_outbox: Optional[Outbox] = None


def get_outbox() -> Outbox:
    """The process's :class:`relaybox.Outbox`, opened on first use from ``settings.RELAYBOX``.

    ``URL`` when set, else the Django database ``DATABASE`` (``"default"``); the tables
    come from ``manage.py migrate`` (the outbox does not create them).
    """
    global _outbox
    box = _outbox
    if box is not None and not box.closed:
        return box
    with _lock:
        if _outbox is None or _outbox.closed:
            c = conf()
            url = str(c.get("URL") or database_url(alias()))
            options = dict(c.get("OPTIONS") or {})
            _outbox = Outbox(url, table_prefix=table_prefix(), partitions=partitions(), **options)
        return _outbox


def close_outbox() -> None:
    """Close the process's outbox (the next :func:`get_outbox` opens a new one)."""
    global _outbox
    with _lock:
        if _outbox is not None:
            _outbox.close()
        _outbox = None

"""Lifetime of a chaos worker process: run until SIGTERM/SIGINT, or until the parent dies.

Workers (producer, relay, consumer) are plain OS processes so the suite can
SIGKILL them. A worker whose parent (the suite) disappears exits by itself,
so an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import threading
import time


def install() -> threading.Event:
    """Return an event set by SIGTERM or SIGINT; exit at once if the parent dies."""
    stop = threading.Event()
    parent = os.getppid()

    def request_stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    def watch_parent() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(0.5)

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    return stop


def say(name: str, text: str) -> None:
    """One timestamped line on stdout (the worker's log file)."""
    print(f"{time.time():.3f} {name}: {text}", flush=True)

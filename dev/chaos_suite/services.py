"""The suite's own PostgreSQL and Kafka: stop and start the broker, crash-restart PostgreSQL.

dev/chaos starts them with dev/services under a state directory and ports of
their own (RELAYBOX_DEV_DIR, RELAYBOX_PG_PORT, RELAYBOX_KAFKA_PORT, ...) and
exports those variables; the functions here run dev/services with the same
environment, so they act on those instances only. ``check_isolated`` refuses
to go on unless both servers are the ones started under that directory.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "dev" / "services"
SHARED_PORTS = {"RELAYBOX_PG_PORT": "5432", "RELAYBOX_KAFKA_PORT": "9092"}


class NotIsolated(RuntimeError):
    """The services in reach are not the suite's own."""


def dev_services(*args: str) -> str:
    """Run dev/services with this environment; return its stdout (raise on failure)."""
    done = subprocess.run(
        [str(SERVICES), *args], capture_output=True, text=True, check=False, timeout=180
    )
    if done.returncode != 0 and args[0] != "status":
        raise RuntimeError(f"dev/services {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def check_isolated() -> None:
    """Raise NotIsolated unless PostgreSQL and Kafka are this suite's own instances."""
    dev_dir = os.environ.get("RELAYBOX_DEV_DIR", "")
    if not dev_dir or Path(dev_dir).resolve() == (REPO / ".dev").resolve():
        raise NotIsolated("RELAYBOX_DEV_DIR must name the suite's own state directory")
    for var, shared in SHARED_PORTS.items():
        if os.environ.get(var, shared) == shared:
            raise NotIsolated(f"{var} is the shared port {shared}")
    status = dev_services("status", "postgres", "kafka")
    if "(data directory" not in status.split("kafka:")[0]:
        raise NotIsolated(f"PostgreSQL is not the one managed under {dev_dir}:\n{status}")
    if not re.search(r"kafka: up at \S+ \(pid \d+", status):
        raise NotIsolated(f"Kafka is not the broker managed under {dev_dir}:\n{status}")


def kafka_stop() -> None:
    """Stop the suite's broker (SIGTERM: a controlled shutdown)."""
    dev_services("stop", "kafka")


def kafka_start(attempts: int = 3) -> None:
    """Start the suite's broker; return once it answers (a failed start is tried again)."""
    for attempt in range(1, attempts + 1):
        try:
            dev_services("start", "kafka")
            return
        except RuntimeError:
            if attempt == attempts:
                raise
            time.sleep(2)


def ensure_up() -> None:
    """Start whichever of the suite's servers is down (a failed scenario may leave one so)."""
    dev_services("start", "postgres")
    kafka_start()


def pg_data_dir() -> str:
    """The data directory of the suite's PostgreSQL, as dev/services reports it."""
    status = dev_services("status", "postgres")
    found = re.search(r"\(data directory (.+)\)", status)
    if not found:
        raise NotIsolated(f"PostgreSQL is not managed by dev/services here: {status.strip()}")
    return found.group(1)


def _pg_ctl() -> str:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda path: [int(n) for n in re.findall(r"\d+", path)],
    )
    if not candidates:
        raise RuntimeError("pg_ctl not found under /usr/lib/postgresql")
    return candidates[-1]


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def pg_restart_immediate() -> float:
    """Crash-restart PostgreSQL (``pg_ctl restart -m immediate``); return how long it took."""
    data = pg_data_dir()
    started = time.time()
    subprocess.run(
        _as_postgres(
            [_pg_ctl(), "-D", data, "-l", f"{data}/server.log", "-m", "immediate", "-w", "-s"]
            + ["-t", "60", "restart"]
        ),
        check=True,
        cwd="/",
        stdout=subprocess.DEVNULL,
        timeout=90,
    )
    return time.time() - started

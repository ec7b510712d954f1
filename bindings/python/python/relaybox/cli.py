"""The ``relaybox`` command: the same subcommands as the ``relaybox`` binary of the Rust crate.

``migrate``, ``schema``, ``relay``, ``status``, ``dead-letters``, ``tail`` and ``console``
are the command line of the Rust core (run in-process through the native
module; ``relaybox --help`` lists them). Their logs go through Python's
``logging`` to stderr (INFO for ``relay``, WARNING otherwise).

``relaybox consumer --app MODULE [--topic T]... [--group G] [--no-relay]``
imports ``MODULE`` (which registers ``@message_handler`` functions and
``@consumer`` classes, and may call ``configure_messaging``), runs the
registered handlers (all, or those of the given topics / group) plus a relay
until SIGINT or SIGTERM, then stops cleanly and exits 0. The Rust binary
hands this subcommand to ``python3 -m relaybox consumer``.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from types import FrameType
from typing import Any, Optional

__all__ = ["main"]

PROG = "relaybox"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="relaybox: transactional outbox, relay and idempotent consumer "
        "(`relaybox --help` lists every subcommand).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser(
        "consumer",
        help="run the handlers registered by a module until SIGINT/SIGTERM",
        description="Import --app, then run its @message_handler functions and @consumer "
        "classes (and a relay) until SIGINT or SIGTERM.",
    )
    run.add_argument(
        "--app",
        required=True,
        metavar="MODULE",
        help="module that registers the handlers, e.g. myservice.handlers",
    )
    run.add_argument(
        "--topic",
        action="append",
        metavar="TOPIC",
        help="run only the handlers of this topic (repeatable)",
    )
    run.add_argument("--group", metavar="GROUP", help="run only the handlers of this group")
    run.add_argument(
        "--no-relay",
        action="store_true",
        help="do not run a relay in this process (relays run elsewhere)",
    )

    return parser


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


class _StopRequested(BaseException):
    """SIGINT or SIGTERM arrived before the consumers ran."""


def _stop_before_start(signum: int, frame: Optional[FrameType]) -> None:
    raise _StopRequested(signum)


def _install_early_stop() -> dict[signal.Signals, Any]:
    """Make SIGINT/SIGTERM end the command while the app loads; return the previous handlers."""
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _stop_before_start)
    return previous


def _import_app(name: str) -> Optional[int]:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    from .errors import ConfigError, RelayboxError, ValidationError

    try:
        importlib.import_module(name)
    except ImportError as exc:
        _error(f"cannot import --app {name!r}: {exc}")
        return EXIT_USAGE
    except (ConfigError, ValidationError) as exc:
        _error(f"--app {name!r}: {exc}")
        return EXIT_USAGE
    except RelayboxError as exc:
        _error(f"--app {name!r}: {exc}")
        return EXIT_FAILURE
    except Exception:
        traceback.print_exc()
        _error(f"importing --app {name!r} failed (traceback above)")
        return EXIT_FAILURE
    return None


def _consumer(args: argparse.Namespace) -> int:
    previous = _install_early_stop()
    try:
        failed = _import_app(args.app)
        if failed is not None:
            return failed
        return _run(args)
    except _StopRequested:
        print(f"{PROG}: stopped before consuming", file=sys.stderr)
        return EXIT_OK
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args: argparse.Namespace) -> int:
    from .errors import ConfigError, RelayboxError, ValidationError
    from .messaging.runner import ConsumerRunner, run_consumers

    def ready(runner: ConsumerRunner) -> None:
        names = ", ".join(f"{c.topic} ({c.group})" for c in runner.consumers)
        print(f"{PROG}: consuming {names}; stop with SIGINT or SIGTERM", file=sys.stderr)

    try:
        run_consumers(args.topic, args.group, relay=not args.no_relay, ready=ready)
    except (ConfigError, ValidationError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except RelayboxError as exc:
        _error(str(exc))
        return EXIT_FAILURE
    print(f"{PROG}: stopped", file=sys.stderr)
    return EXIT_OK


def _native_command(argv: list[str]) -> int:
    """Run a subcommand of the core's command line; its logs go to stderr via ``logging``."""
    from . import _native

    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO if argv[:1] == ["relay"] else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    if threading.current_thread() is threading.main_thread():
        # As in the binary: SIGINT ends the process unless the command handles it
        # (`relay` stops cleanly on SIGINT and SIGTERM).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    return _native.cli_main([PROG, *argv])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``relaybox`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Usage errors of ``consumer`` exit with status 2 (argparse raises ``SystemExit(2)``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["consumer"]:
        return _consumer(_parser().parse_args(args))
    return _native_command(args)


if __name__ == "__main__":
    sys.exit(main())

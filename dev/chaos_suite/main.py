"""dev/chaos: fault scenarios on the suite's own PostgreSQL and Kafka, judged independently.

Run through dev/chaos, which starts those servers (RELAYBOX_DEV_DIR,
ports of their own) and exports RELAYBOX_DATABASE_URL and
RELAYBOX_KAFKA_BOOTSTRAP. Prints one line per scenario and exits 1 if any
failed (a missing message, an order violation, more duplicates than the
scenario allows, an error), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

import kafka_tools
import relaybox
import services
from checks import Outcome
from harness import Context
from profiles import FULL, SHORT
from scenarios import SCENARIOS


def select(names: list[str]) -> list[str]:
    """Scenario names matching the arguments (a name or a part of one); all when none."""
    if not names:
        return list(SCENARIOS)
    chosen: list[str] = []
    for wanted in names:
        matches = [n for n in SCENARIOS if wanted in n]
        if not matches:
            sys.exit(f"dev/chaos: no scenario matches {wanted!r} (known: {', '.join(SCENARIOS)})")
        chosen += [m for m in matches if m not in chosen]
    return [n for n in SCENARIOS if n in chosen]


def clean_previous_runs(ctx: Context) -> None:
    """Drop the tables and topics earlier runs left in the suite's own servers."""
    kafka_tools.delete_topics(ctx.bootstrap, "chaos-")
    outbox = relaybox.Outbox(ctx.db)
    try:
        with outbox.transaction() as tx:
            rows = tx.query(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename ~ '^c[0-9a-f]{6}_'"
            )
            for row in rows:
                tx.execute(f'DROP TABLE IF EXISTS "{row["tablename"]}" CASCADE')
    finally:
        outbox.close()
    for old in ctx.work.parent.glob("*"):
        if old != ctx.work:
            shutil.rmtree(old, ignore_errors=True)


def main() -> int:
    """Run the selected scenarios; return the exit status."""
    parser = argparse.ArgumentParser(prog="dev/chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the short form (CI)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("scenarios", nargs="*", help="run only these (names or parts of names)")
    args = parser.parse_args()
    if args.list:
        for name, function in SCENARIOS.items():
            print(f"{name:<15} {(function.__doc__ or '').splitlines()[0]}")
        return 0
    names = select(args.scenarios)
    profile = SHORT if args.short else FULL

    services.check_isolated()
    run_id = uuid.uuid4().hex[:6]
    dev_dir = Path(os.environ["RELAYBOX_DEV_DIR"])
    ctx = Context(
        db=os.environ["RELAYBOX_DATABASE_URL"],
        bootstrap=os.environ["RELAYBOX_KAFKA_BOOTSTRAP"],
        run_id=run_id,
        work=dev_dir / "runs" / run_id,
    )
    ctx.work.mkdir(parents=True, exist_ok=True)
    # The binding's warnings (the database going away, ...) go to a file, not the result lines.
    logging.basicConfig(
        filename=ctx.work / "suite.log",
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    clean_previous_runs(ctx)
    print(
        f"dev/chaos: {profile.name} form, {len(names)} scenarios, run {run_id}"
        f" (logs in {ctx.work}); PostgreSQL {ctx.db}, Kafka {ctx.bootstrap}",
        flush=True,
    )
    began = time.monotonic()
    outcomes: list[Outcome] = []
    for name in names:
        started = time.monotonic()
        try:
            services.ensure_up()
            outcome = SCENARIOS[name](ctx, profile)
        except Exception as error:  # noqa: BLE001 - one scenario's error fails that scenario
            outcome = Outcome(name=name, failures=[f"error: {type(error).__name__}: {error}"])
        outcome.elapsed = time.monotonic() - started
        outcomes.append(outcome)
        print(outcome.line(), flush=True)
        for line in outcome.details():
            print(line, flush=True)
    failed = [o.name for o in outcomes if not o.passed]
    total = time.monotonic() - began
    verdict = f"FAILED: {', '.join(failed)}" if failed else "all passed"
    print(f"dev/chaos: {verdict} ({len(outcomes)} scenarios in {total:.0f}s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

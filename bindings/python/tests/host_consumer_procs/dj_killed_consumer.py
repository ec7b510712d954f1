"""A relaybox.django.Consumer in a process of its own that dies by SIGKILL right after
the commit of one marked message, before the core can acknowledge it.

Usage: ``python dj_killed_consumer.py TOPIC GROUP MESSAGE_ID HOLD`` with the Django settings
of the tests (``DJANGO_SETTINGS_MODULE``, ``RELAYBOX_DJANGO_TEST_PREFIX``). The handler
creates one ``Handled`` row per message through the ORM; for the marked message a
``transaction.on_commit`` hook waits HOLD seconds, then kills the process: the inbox
row and the handler's row are committed, the delivery is not acknowledged. The hold
gives a consumer that acknowledged too early the time to have its acknowledgement
recorded (other lanes go on meanwhile).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import django


def die(hold: float) -> None:
    """Waits ``hold`` seconds, then kills this process."""
    time.sleep(hold)
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    topic, group, kill, hold = sys.argv[1:5]
    django.setup()
    from dj_handled import handled_model
    from django.db import transaction

    import relaybox
    import relaybox.django as rdj

    handled = handled_model()

    def handle(message: relaybox.Message) -> None:
        handled.objects.create(
            message_id=message.id, key=message.key or "", seq=message.json()["seq"]
        )
        if message.id == kill:
            transaction.on_commit(lambda: die(float(hold)))

    rdj.Consumer(topic, handle, group=group, poll_interval=0.05).start()
    print("consuming", file=sys.stderr, flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()

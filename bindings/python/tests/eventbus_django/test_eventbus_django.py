"""The event bus with a real Django model on real PostgreSQL, run by a real Celery worker.

The worker is a ``celery -A eventbus_proj worker --consumer=relaybox.eventbus.celery.SQSConsumer``
process (solo pool, Redis broker) of the project in this directory: it runs the seed's
``DjangoCeleryTaskWithCallback`` tasks and, through ``SQSConsumer``, the seed's SQS
subscriber. This process only sends tasks, runs the SNS relay (moto) and observes: the
``User`` rows, the notifications of a boto3 queue subscribed to the topic, and the rows the
subscriber's hook writes. Django itself runs only in the subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import boto3
import celery
import psycopg
import pytest
from conftest import wait_for
from service_checks import aws_endpoint, redis_url  # noqa: F401  (fixtures)

import relaybox
from relaybox.eventbus import AmazonSNSPublisher

HERE = Path(__file__).resolve().parent
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
RUN = uuid.uuid4().hex[:10]
PREFIX = f"ebdj_{RUN}_"
TASKS = "eventbus_users.tasks."


class Bus:
    """The topic, the subscriber's queue and a queue read here with boto3."""

    def __init__(self, endpoint: str) -> None:
        session = boto3.session.Session(region_name=REGION, **CREDENTIALS)
        self.sns = session.client("sns", endpoint_url=endpoint)
        self.sqs = session.client("sqs", endpoint_url=endpoint)
        self.topic_arn = self.sns.create_topic(Name=f"py-ebdj-{RUN}")["TopicArn"]
        self.events_queue = f"py-ebdj-events-{RUN}"
        self.events_url = self._subscribed(self.events_queue)
        self.boto_url = self._subscribed(f"py-ebdj-boto-{RUN}")
        self.seen: list[dict[str, Any]] = []

    def _subscribed(self, name: str) -> str:
        url = str(self.sqs.create_queue(QueueName=name)["QueueUrl"])
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.sns.subscribe(TopicArn=self.topic_arn, Protocol="sqs", Endpoint=arn)
        return url

    def notifications(self, entity_id: str, expected: int) -> list[dict[str, Any]]:
        """The SNS notifications about ``entity_id`` once ``expected`` of them arrived."""

        def arrived() -> list[dict[str, Any]]:
            reply = self.sqs.receive_message(
                QueueUrl=self.boto_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for message in reply.get("Messages", []):
                self.seen.append(json.loads(message["Body"]))
                self.sqs.delete_message(
                    QueueUrl=self.boto_url, ReceiptHandle=message["ReceiptHandle"]
                )
            mine = [n for n in self.seen if entity_id in n["Message"]]
            return mine if len(mine) >= expected else []

        found = wait_for(f"{expected} notification(s) about {entity_id}", arrived)
        assert len(found) == expected, found
        return found

    def events_queue_drained(self) -> bool:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.events_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return all(int(v) == 0 for v in attributes.values())


def subprocess_env(bus: Bus) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env["DJANGO_SETTINGS_MODULE"] = "eventbus_proj.settings"
    env["EVENTBUS_DJANGO_PREFIX"] = PREFIX
    env["EVENTBUS_DJANGO_TASK_QUEUE"] = f"py-ebdj-tasks-{RUN}"
    env["EVENTBUS_DJANGO_EVENTS_QUEUE"] = bus.events_queue
    env["EVENTBUS_DJANGO_TOPIC_ARN"] = bus.topic_arn
    return env


def forget_migrations(pg: psycopg.Connection[Any]) -> None:
    """Drop this run's tables and Django's record of the two apps' migrations."""
    for (table,) in pg.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE %s",
        (PREFIX + "%",),
    ).fetchall():
        pg.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')
    if pg.execute("SELECT to_regclass('django_migrations')").fetchone() != (None,):
        pg.execute("DELETE FROM django_migrations WHERE app IN ('relaybox', 'eventbus_users')")


class Stack:
    """Everything the tests observe through."""

    def __init__(
        self,
        bus: Bus,
        pg: psycopg.Connection[Any],
        client: celery.Celery,
        worker: subprocess.Popen[bytes],
        log: IO[str],
    ) -> None:
        self.bus, self.pg, self.client, self.worker, self.log = bus, pg, client, worker, log

    def worker_log(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def new_user(self, email: str) -> uuid.UUID:
        user_id = uuid.uuid4()
        self.pg.execute(
            f"INSERT INTO {PREFIX}user (id, email, is_active) VALUES (%s, %s, false)",
            (user_id, email),
        )
        return user_id

    def user(self, user_id: uuid.UUID) -> Any:
        return self.pg.execute(
            f"SELECT email, is_active FROM {PREFIX}user WHERE id = %s", (user_id,)
        ).fetchone()

    def run(self, task: str, **kwargs: Any) -> Any:
        """Run ``task`` on the worker; its result, or its exception raised here."""
        result = self.client.send_task(TASKS + task, kwargs=kwargs)
        wait_for(f"{task} done", lambda: result.ready() or self.worker.poll() is not None)
        assert self.worker.poll() is None, f"the worker exited:\n{self.worker_log()}"
        return result.get(timeout=10)

    def hook_calls(self, entity_id: str) -> Counter[str]:
        rows = self.pg.execute(
            f"SELECT event_name FROM {PREFIX}event_log WHERE entity_id = %s", (entity_id,)
        ).fetchall()
        return Counter(str(r[0]) for r in rows)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg_url: str,
    redis_url: str,  # noqa: F811
    aws_endpoint: str,  # noqa: F811
) -> Iterator[Stack]:
    bus = Bus(aws_endpoint)
    env = subprocess_env(bus)
    with psycopg.connect(pg_url, autocommit=True) as pg:
        forget_migrations(pg)
        migrate = subprocess.run(
            [sys.executable, "-m", "django", "migrate", "-v", "0"],
            env=env,
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrate.returncode == 0, migrate.stderr
        log = (tmp_path_factory.mktemp("worker") / "worker.log").open("w+")
        worker = subprocess.Popen(
            [
                sys.executable,
                *("-m", "celery", "-A", "eventbus_proj", "worker", "-P", "solo", "-l", "INFO"),
                *("-Q", f"{env['EVENTBUS_DJANGO_TASK_QUEUE']},{bus.events_queue}"),
                *("--without-gossip", "--without-mingle", "--without-heartbeat"),
                "--consumer=relaybox.eventbus.celery.SQSConsumer",
            ],
            env=env,
            cwd=HERE,
            stderr=log,
            stdout=subprocess.DEVNULL,
        )
        client = celery.Celery(f"ebdj-client-{RUN}", broker=redis_url, backend=redis_url)
        client.conf.task_default_queue = env["EVENTBUS_DJANGO_TASK_QUEUE"]
        publisher = AmazonSNSPublisher(
            "UserService",
            {"topic_arn": bus.topic_arn, "endpoint_url": aws_endpoint, **CREDENTIALS},
        )
        outbox = relaybox.Outbox(pg_url, table_prefix=PREFIX)
        try:
            with publisher.relay(outbox, poll_interval=0.05, backoff_initial=0.1):
                yield Stack(bus, pg, client, worker, log)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=30)
            log.close()
            outbox.close()
            forget_migrations(pg)


def test_success_activates_the_user_and_publishes_user_registered_once(stack: Stack) -> None:
    user_id = stack.new_user("ada@example.com")
    # The seed's call: a UUID keyword argument.
    assert stack.run("register_user_task", user_id=user_id) == {
        "id": str(user_id),
        "email": "ada@example.com",
    }
    assert stack.user(user_id) == ("ada@example.com", True)

    [notification] = stack.bus.notifications(str(user_id), 1)
    attributes = {k: v["Value"] for k, v in notification["MessageAttributes"].items()}
    assert {k: attributes[k] for k in ("entityName", "publisherName", "eventName")} == {
        "entityName": "User",
        "publisherName": "UserService",
        "eventName": "UserRegistered",
    }
    body = json.loads(notification["Message"])
    assert body["Payload"] == {"id": str(user_id), "email": "ada@example.com"}
    assert body["Metadata"]["EntityId"] == str(user_id)
    assert body["Metadata"]["EventName"] == "UserRegistered"
    # The subscriber's hook, run by the worker's SQSConsumer, saw it once.
    wait_for("the hook's row", lambda: stack.hook_calls(str(user_id)))
    wait_for("the events queue drained", stack.bus.events_queue_drained)
    assert stack.hook_calls(str(user_id)) == {"UserRegistered": 1}


def test_failure_rolls_the_body_back_and_publishes_the_failure_event(stack: Stack) -> None:
    user_id = stack.new_user("bob@invalid.test")
    with pytest.raises(ValueError, match="bob@invalid.test cannot be registered"):
        stack.run("register_user_task", user_id=user_id)
    # The body saved is_active = True before raising: rolled back.
    assert stack.user(user_id) == ("bob@invalid.test", False)

    [notification] = stack.bus.notifications(str(user_id), 1)
    body = json.loads(notification["Message"])
    assert body["Metadata"]["EventName"] == "UserRegistrationFailed"
    assert body["Metadata"]["EntityId"] == str(user_id)
    payload = body["Payload"]
    assert payload["code"] == "ValueError"
    assert payload["detail"] == "bob@invalid.test cannot be registered"
    assert payload["origin"] == TASKS + "register_user_task"
    assert payload["data"]["kwargs"] == {"user_id": str(user_id)}
    wait_for("the hook's row", lambda: stack.hook_calls(str(user_id)))
    assert stack.hook_calls(str(user_id)) == {"UserRegistrationFailed": 1}


def test_delete_on_success_deletes_the_user_with_the_event(stack: Stack) -> None:
    user_id = stack.new_user("cy@example.com")
    assert stack.run("register_and_delete_user_task", user_id=user_id) == {
        "id": str(user_id),
        "email": "cy@example.com",
    }
    assert stack.user(user_id) is None
    [notification] = stack.bus.notifications(str(user_id), 1)
    body = json.loads(notification["Message"])
    assert body["Metadata"]["EventName"] == "UserRegistered"
    assert body["Payload"] == {"id": str(user_id), "email": "cy@example.com"}


def test_delete_on_failure_deletes_the_user_with_the_failure_event(stack: Stack) -> None:
    user_id = stack.new_user("dee@invalid.test")
    with pytest.raises(ValueError, match="cannot be registered"):
        stack.run("register_or_delete_user_task", user_id=user_id)
    assert stack.user(user_id) is None
    [notification] = stack.bus.notifications(str(user_id), 1)
    body = json.loads(notification["Message"])
    assert body["Metadata"]["EventName"] == "UserRegistrationFailed"
    assert body["Payload"]["code"] == "ValueError"


def test_a_missing_instance_is_a_does_not_exist_failure(stack: Stack) -> None:
    missing = uuid.uuid4()
    with pytest.raises(Exception, match="matching query does not exist") as raised:
        stack.run("register_or_delete_user_task", user_id=missing)
    assert type(raised.value).__name__.endswith("DoesNotExist")
    [notification] = stack.bus.notifications(str(missing), 1)
    body = json.loads(notification["Message"])
    assert body["Metadata"]["EventName"] == "UserRegistrationFailed"
    assert body["Metadata"]["EntityId"] == str(missing)
    assert body["Payload"]["code"] == "DoesNotExist"
    assert body["Payload"]["detail"] == "User matching query does not exist."


def test_a_message_delivered_twice_runs_the_hook_once(stack: Stack) -> None:
    user_id = stack.new_user("eve@example.com")
    stack.run("register_user_task", user_id=user_id)
    [notification] = stack.bus.notifications(str(user_id), 1)
    wait_for("the hook's row", lambda: stack.hook_calls(str(user_id)))

    # SNS delivers the same notification again (at-least-once): the subscriber's queue
    # gets a second copy, which the worker takes and deletes without calling the hook.
    stack.bus.sqs.send_message(QueueUrl=stack.bus.events_url, MessageBody=json.dumps(notification))
    wait_for("the copy consumed", stack.bus.events_queue_drained)
    assert stack.hook_calls(str(user_id)) == {"UserRegistered": 1}

    # The same body under another relaybox id is another message: the hook runs.
    other = json.loads(json.dumps(notification))
    other["MessageAttributes"]["relaybox-id"]["Value"] = str(uuid.uuid4())
    stack.bus.sqs.send_message(QueueUrl=stack.bus.events_url, MessageBody=json.dumps(other))
    wait_for("the hook run again", lambda: stack.hook_calls(str(user_id))["UserRegistered"] == 2)


def test_the_worker_stops_on_sigterm_and_reports_the_duplicate(stack: Stack) -> None:
    worker = stack.worker
    assert worker.poll() is None, "the worker exited early"
    wait_for("the worker ready", lambda: " ready." in stack.worker_log())
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)
    stderr = stack.worker_log()
    assert worker.returncode == 0, stderr
    assert f"relaybox eventbus: consuming SQS queue {stack.bus.events_queue}" in stderr
    assert f"stopped SQS queue {stack.bus.events_queue}" in stderr
    assert "'duplicates': 1" in stderr

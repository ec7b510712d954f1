"""A Celery task base that publishes the task's outcome as an event, through the outbox.

::

    @app.task(bind=True, base=CeleryTaskWithCallback, publisher=user_publisher,
              payload_cls=UserRegisteredPayload,
              exception_payload_cls=UserRegistrationFailedPayload)
    def register_user(task, user_id):
        task.db.execute("UPDATE users SET active = true WHERE id = $1", [user_id])
        return load_user(user_id)

The task body runs inside a transaction of the publisher's outbox
(``task.db``, also :func:`relaybox.current_transaction`, so the messaging
façade and :meth:`AmazonSNSPublisher.publish` write into it). When the body
returns, its result is validated with ``payload_cls`` (``from_attributes``:
an ORM object works) and the success event (``<Entity>Registered`` unless
``success_event_name`` says otherwise) is written in that same transaction,
which then commits: the body's writes and the event are durable together.

When the body raises, its transaction rolls back, and the failure event
(``<Entity>RegistrationFailed`` unless ``failure_event_name`` says
otherwise) with an ``exception_payload_cls`` payload (``code`` = the
exception's class name, ``detail`` = its message, ``origin`` = the task
name, ``data`` = the task id and arguments) is written in a transaction of
its own. The exception is then re-raised (the task fails, and Celery's
retry settings apply) unless ``reraise_on_failure = False``, in which case
the task returns ``None``. Celery's own control-flow exceptions (``Retry``,
``Ignore``, ``Reject``) are re-raised without an event.

Options (task decorator keywords or class attributes): ``publisher``,
``payload_cls``, ``exception_payload_cls``, ``entity_name``,
``success_event_name``, ``failure_event_name``, ``routing_keys``,
``contains_personal_data``, ``reraise_on_failure``, ``model`` (for
:meth:`~CeleryTaskWithCallback.get_instance`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Optional

import celery
from celery.exceptions import Ignore, Reject, Retry
from pydantic_core import to_jsonable_python

from ..outbox import Transaction, current_transaction
from .aws import config_error
from .base import Event, EventFailPayload, EventPayload
from .publisher import AmazonSNSPublisher

__all__ = ["CeleryTaskWithCallback", "DjangoCeleryTaskWithCallback"]

_CONTROL_FLOW = (Retry, Ignore, Reject)


class CeleryTaskWithCallback(celery.Task):  # type: ignore[misc]
    """Celery task base publishing a success or failure event (see the module documentation)."""

    publisher: ClassVar[Optional[AmazonSNSPublisher]] = None
    """The publisher of the events (required)."""
    payload_cls: ClassVar[Optional[type[EventPayload]]] = None
    """Payload class of the success event; the body's result is validated with it."""
    exception_payload_cls: ClassVar[type[EventFailPayload]] = EventFailPayload
    """Payload class of the failure event."""
    entity_name: ClassVar[Optional[str]] = None
    """``EntityName`` of both events; default from ``payload_cls`` or ``model``."""
    success_event_name: ClassVar[Optional[str]] = None
    """Name of the success event; default ``<Entity>Registered``."""
    failure_event_name: ClassVar[Optional[str]] = None
    """Name of the failure event; default ``<Entity>RegistrationFailed``."""
    routing_keys: ClassVar[Optional[Mapping[str, str]]] = None
    """Extra SNS MessageAttributes of both events."""
    contains_personal_data: ClassVar[bool] = False
    """``ContainsPersonalData`` of the success event."""
    reraise_on_failure: ClassVar[bool] = True
    """Re-raise the body's exception after publishing the failure event."""
    model: ClassVar[Any] = None
    """A Django model class for :meth:`get_instance`."""

    @property
    def db(self) -> Transaction:
        """The transaction the body runs in (only while the body runs)."""
        tx = current_transaction()
        if not isinstance(tx, Transaction):
            raise RuntimeError("task.db is only available while the task body runs")
        return tx

    def get_instance(self, **lookup: Any) -> Any:
        """``model.objects.get(**lookup)`` (Django models)."""
        if self.model is None:
            raise config_error("model: get_instance() needs the task option model=<Model>")
        return self.model.objects.get(**lookup)

    def _publisher(self) -> AmazonSNSPublisher:
        if self.publisher is None:
            raise config_error(f"publisher: task {self.name!r} has no publisher= option")
        return self.publisher

    def _entity(self) -> str:
        if self.entity_name:
            return self.entity_name
        for source in (self.payload_cls, self.model):
            if source is not None:
                name = source.__name__
                return re.sub(r"(RegisteredPayload|Payload)$", "", name) or name
        raise config_error(f"entity_name: task {self.name!r} needs entity_name= or payload_cls=")

    def success_event(self, result: Any) -> Event:
        """The success event of the body's ``result``."""
        entity = self._entity()
        payload = result
        if self.payload_cls is not None:
            payload = self.payload_cls.model_validate(result)
        return self._publisher().event(
            self.success_event_name or f"{entity}Registered",
            payload,
            entity_name=entity,
            contains_personal_data=self.contains_personal_data,
        )

    def failure_event(self, exc: BaseException, args: Any, kwargs: Mapping[str, Any]) -> Event:
        """The failure event of the body's exception ``exc``."""
        entity = self._entity()
        payload = self.exception_payload_cls(
            code=type(exc).__name__,
            detail=str(exc),
            origin=self.name,
            data=to_jsonable_python(
                {"task_id": self.request.id, "args": list(args), "kwargs": dict(kwargs)},
                fallback=repr,
            ),
        )
        entity_id = kwargs.get("id", kwargs.get(f"{_snake(entity)}_id"))
        return self._publisher().event(
            self.failure_event_name or f"{entity}RegistrationFailed",
            payload,
            entity_name=entity,
            entity_id=entity_id,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the body in an outbox transaction and publish its outcome."""
        publisher = self._publisher()
        try:
            with publisher.outbox.transaction() as tx:
                result = super().__call__(*args, **kwargs)
                event = self.success_event(result)
                publisher.publish(event, routing_keys=self.routing_keys, db=tx)
        except _CONTROL_FLOW:
            raise
        except Exception as exc:
            publisher.publish(
                self.failure_event(exc, args, kwargs),
                routing_keys=self.routing_keys,
                db=publisher.outbox,
            )
            if self.reraise_on_failure:
                raise
            return None
        if isinstance(event.payload, EventPayload):
            return event.payload.model_dump(mode="json")
        return to_jsonable_python(event.payload, fallback=repr)


DjangoCeleryTaskWithCallback = CeleryTaskWithCallback
"""The name the original library gives the task base (use ``model=`` for :meth:`get_instance`)."""


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()

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

:class:`DjangoCeleryTaskWithCallback` does the same inside Django's
``transaction.atomic()``, with ``get_instance`` and the ``delete_on_success``
/ ``delete_on_failure`` options.

Options (task decorator keywords or class attributes): ``publisher``,
``payload_cls``, ``exception_payload_cls``, ``entity_name``,
``success_event_name``, ``failure_event_name``, ``routing_keys``,
``contains_personal_data``, ``reraise_on_failure``, ``model`` (for
:meth:`~CeleryTaskWithCallback.get_instance`).
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union

import celery
from celery.exceptions import Ignore, Reject, Retry
from kombu.utils.imports import symbol_by_name
from pydantic_core import to_jsonable_python

from ...outbox import Transaction, current_transaction
from ..aws import config_error
from ..base import Event, EventFailPayload, EventPayload
from ..publisher import AmazonSNSPublisher

__all__ = ["CeleryTaskWithCallback", "DjangoCeleryTaskWithCallback"]

_CONTROL_FLOW = (Retry, Ignore, Reject)

PUBLISHER_SETTING = "eventbus_publisher"
"""Celery setting naming the default publisher of the task bases (``CELERY_EVENTBUS_PUBLISHER``
in Django settings read with ``namespace="CELERY"``): an object or a dotted path."""


class CeleryTaskWithCallback(celery.Task):  # type: ignore[misc]
    """Celery task base publishing a success or failure event (see the module documentation)."""

    publisher: ClassVar[Union[AmazonSNSPublisher, str, None]] = None
    """The publisher of the events, or its dotted path; default: the Celery setting
    ``eventbus_publisher`` (one of the two is required)."""
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
        source = "publisher="
        value: Any = self.publisher
        if value is None:
            source = f"the Celery setting {PUBLISHER_SETTING}"
            value = self.app.conf.get(PUBLISHER_SETTING)
        if value is None:
            raise config_error(
                f"publisher: task {self.name!r} has no publisher= option and the Celery "
                f"setting {PUBLISHER_SETTING} is not set"
            )
        if isinstance(value, str):
            try:
                value = symbol_by_name(value)  # type: ignore[no-untyped-call]
            except (ImportError, AttributeError, ValueError) as exc:
                raise config_error(
                    f"publisher: {source} names {value!r}, which cannot be imported ({exc})"
                ) from exc
        if not isinstance(value, AmazonSNSPublisher):
            raise config_error(
                f"publisher: {source} of task {self.name!r} is a {type(value).__name__}, "
                "not an AmazonSNSPublisher"
            )
        return value

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

    def failure_event(
        self,
        exc: BaseException,
        args: Any,
        kwargs: Mapping[str, Any],
        *,
        entity_id: Any = None,
    ) -> Event:
        """The failure event of the body's exception ``exc``.

        ``EntityId`` is ``entity_id``, else the ``id`` or ``<entity>_id`` keyword argument.
        """
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
        if entity_id is None:
            entity_id = kwargs.get("id", kwargs.get(f"{_snake(entity)}_id"))
        return self._publisher().event(
            self.failure_event_name or f"{entity}RegistrationFailed",
            payload,
            entity_name=entity,
            entity_id=entity_id,
        )

    def _run_body(self, *args: Any, **kwargs: Any) -> Any:
        """The task body itself (Celery's ``Task.__call__``)."""
        return celery.Task.__call__(self, *args, **kwargs)

    def _returned(self, event: Event) -> Any:
        """What the task returns after publishing ``event``: its payload as JSON values."""
        if isinstance(event.payload, EventPayload):
            return event.payload.model_dump(mode="json")
        return to_jsonable_python(event.payload, fallback=repr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the body in an outbox transaction and publish its outcome."""
        publisher = self._publisher()
        try:
            with publisher.outbox.transaction() as tx:
                result = self._run_body(*args, **kwargs)
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
        return self._returned(event)


@dataclass
class _Run:
    """What one run of a Django task fetched (tasks are shared between a worker's threads)."""

    instance: Any = None
    """The instance :meth:`DjangoCeleryTaskWithCallback.get_instance` returned last."""
    pk: Any = None
    """Its primary key when it was fetched."""


_current_run: contextvars.ContextVar[Optional[_Run]] = contextvars.ContextVar(
    "relaybox_eventbus_django_task_run", default=None
)


class DjangoCeleryTaskWithCallback(CeleryTaskWithCallback):
    """Celery task base for Django: the body, its ORM writes and its event in one ``atomic()``.

    ::

        @shared_task(bind=True, base=DjangoCeleryTaskWithCallback, model=User,
                     payload_cls=UserRegisteredPayload,
                     exception_payload_cls=UserRegistrationFailedPayload,
                     delete_on_failure=False, delete_on_success=False)
        def register_user_task(task, user_id):
            user = task.get_instance(id=user_id)
            user.is_active = True
            user.save()
            return user

    The body runs inside ``django.db.transaction.atomic(using=using)``. When
    it returns, the success event is built from its result (or, when it
    returns ``None``, from the instance :meth:`get_instance` fetched) and
    written into the outbox on that same Django connection
    (:func:`relaybox.django.enqueue`); with ``delete_on_success`` the
    instance is deleted in the block too. Leaving the block commits the
    body's writes, the event and the deletion together.

    When the body (or building the success event) raises, the block rolls
    back: none of the body's writes, no success event. The failure event is
    then written in an ``atomic()`` block of its own; with
    ``delete_on_failure`` the instance :meth:`get_instance` returned is
    deleted (by primary key, as it is in the database after the rollback) in
    that block. A missing instance (``Model.DoesNotExist`` from
    :meth:`get_instance`) is a failure like any other: its event has
    ``code = "DoesNotExist"``.

    Called inside an outer ``atomic()`` block (an eager task in a view with
    ``ATOMIC_REQUESTS``), both blocks are savepoints of it and commit with it.

    Options besides those of :class:`CeleryTaskWithCallback`: ``model``,
    ``delete_on_success``, ``delete_on_failure`` and ``using`` (the Django
    database alias holding the model and the relaybox tables; default
    ``RELAYBOX["DATABASE"]``, else ``"default"``).
    """

    delete_on_success: ClassVar[bool] = False
    """Delete the task's instance in the success event's transaction."""
    delete_on_failure: ClassVar[bool] = False
    """Delete the instance :meth:`get_instance` returned in the failure event's transaction."""
    using: ClassVar[Optional[str]] = None
    """The Django database alias of the transaction (default: relaybox.django's)."""

    def _alias(self) -> str:
        if self.using:
            return self.using
        from ...django._conf import alias

        return alias()

    @property
    def db(self) -> Any:
        """The Django connection whose ``atomic()`` block the body runs in (while it runs)."""
        if _current_run.get() is None:
            raise RuntimeError("task.db is only available while the task body runs")
        from django.db import connections

        return connections[self._alias()]

    def get_instance(self, **lookup: Any) -> Any:
        """``model.objects.using(alias).get(**lookup)``, remembered as the task's instance.

        Raises the model's ``DoesNotExist`` (or ``MultipleObjectsReturned``) as Django does.
        """
        if self.model is None:
            raise config_error("model: get_instance() needs the task option model=<Model>")
        instance = self.model._default_manager.using(self._alias()).get(**lookup)
        run = _current_run.get()
        if run is not None:
            run.instance, run.pk = instance, instance.pk
        return instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the body in ``atomic()`` and publish its outcome (see the class)."""
        from django.db import connections, transaction
        from django.db.models import Model

        publisher = self._publisher()
        using = self._alias()
        with _run_scope() as run:
            try:
                with transaction.atomic(using=using):
                    result = self._run_body(*args, **kwargs)
                    returned = result if isinstance(result, Model) else None
                    event = self.success_event(result if result is not None else run.instance)
                    if self.delete_on_success:
                        instance = returned if returned is not None else run.instance
                        if instance is None:
                            raise config_error(
                                f"delete_on_success: task {self.name!r} has no instance to "
                                "delete (call task.get_instance() or return the model instance)"
                            )
                        instance.delete(using=using)
                    publisher.publish(event, routing_keys=self.routing_keys, db=connections[using])
            except _CONTROL_FLOW:
                raise
            except Exception as exc:
                instance = run.instance
                with transaction.atomic(using=using):
                    publisher.publish(
                        self.failure_event(
                            exc,
                            args,
                            kwargs,
                            entity_id=run.pk,
                        ),
                        routing_keys=self.routing_keys,
                        db=connections[using],
                    )
                    if self.delete_on_failure and instance is not None:
                        manager = type(instance)._default_manager
                        manager.using(using).filter(pk=run.pk).delete()
                if self.reraise_on_failure:
                    raise
                return None
        return self._returned(event)


@contextmanager
def _run_scope() -> Iterator[_Run]:
    run = _Run()
    token = _current_run.set(run)
    try:
        yield run
    finally:
        _current_run.reset(token)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()

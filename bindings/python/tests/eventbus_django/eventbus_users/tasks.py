"""The seed's registration task, and the same body with ``delete_on_success`` and
``delete_on_failure``. An address at ``invalid.test`` makes the body fail after it saved."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from celery import shared_task

from relaybox.eventbus.celery.tasks import DjangoCeleryTaskWithCallback

from .events import UserRegisteredPayload, UserRegistrationFailedPayload
from .models import User


def _register(task: DjangoCeleryTaskWithCallback, user_id: UUID) -> Any:
    # Get user instance (handled by DjangoCeleryTaskWithCallback)
    user = task.get_instance(id=user_id)

    # Your registration logic here
    user.is_active = True
    user.save()
    if user.email.endswith("@invalid.test"):
        raise ValueError(f"{user.email} cannot be registered")

    return user


@shared_task(  # type: ignore[untyped-decorator]
    bind=True,
    base=DjangoCeleryTaskWithCallback,
    model=User,
    payload_cls=UserRegisteredPayload,
    exception_payload_cls=UserRegistrationFailedPayload,
    delete_on_failure=False,  # Don't delete user on failure
    delete_on_success=False,  # Don't delete user on success
)
def register_user_task(task: DjangoCeleryTaskWithCallback, user_id: UUID) -> Any:
    return _register(task, user_id)


@shared_task(  # type: ignore[untyped-decorator]
    bind=True,
    base=DjangoCeleryTaskWithCallback,
    model=User,
    payload_cls=UserRegisteredPayload,
    exception_payload_cls=UserRegistrationFailedPayload,
    delete_on_success=True,
)
def register_and_delete_user_task(task: DjangoCeleryTaskWithCallback, user_id: UUID) -> Any:
    return _register(task, user_id)


@shared_task(  # type: ignore[untyped-decorator]
    bind=True,
    base=DjangoCeleryTaskWithCallback,
    model=User,
    payload_cls=UserRegisteredPayload,
    exception_payload_cls=UserRegistrationFailedPayload,
    delete_on_failure=True,
)
def register_or_delete_user_task(task: DjangoCeleryTaskWithCallback, user_id: UUID) -> Any:
    return _register(task, user_id)

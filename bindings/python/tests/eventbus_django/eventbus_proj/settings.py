"""Settings of the event bus test project: the real PostgreSQL test database, the Redis
of ``dev/services`` as Celery's broker, and names of the test run's own
(``EVENTBUS_DJANGO_*`` variables set by the test module)."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

_url = urlsplit(os.environ["RELAYBOX_TEST_DATABASE_URL"])

SECRET_KEY = "relaybox-eventbus-django-tests"
USE_TZ = True
INSTALLED_APPS = ["relaybox.django", "eventbus_users"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": unquote(_url.username or ""),
        "PASSWORD": unquote(_url.password or ""),
        "HOST": _url.hostname or "",
        "PORT": str(_url.port or ""),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
RELAYBOX = {"TABLE_PREFIX": os.environ["EVENTBUS_DJANGO_PREFIX"]}

CELERY_BROKER_URL = os.environ["REDIS_URL"]
CELERY_RESULT_BACKEND = os.environ["REDIS_URL"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = os.environ["EVENTBUS_DJANGO_TASK_QUEUE"]
# The task bases publish with this publisher (the tasks name none, as in the seed).
CELERY_EVENTBUS_PUBLISHER = "eventbus_users.publishers.user_publisher"
# The worker imports the module that builds the SQS subscriber.
CELERY_IMPORTS = ["eventbus_users.subscribers"]

"""Django settings of the relaybox.django tests: the real PostgreSQL test database and
a table prefix of the test run's own (``RELAYBOX_DJANGO_TEST_PREFIX``)."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

_url = urlsplit(os.environ["RELAYBOX_TEST_DATABASE_URL"])

SECRET_KEY = "relaybox-django-tests"
USE_TZ = True
INSTALLED_APPS = ["relaybox.django", "shop"]
# The shop app's views, served to django.test.Client.
ROOT_URLCONF = "shop.urls"
ALLOWED_HOSTS = ["testserver"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
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
# No URL: the outbox reaches DATABASES["default"].
RELAYBOX = {
    "TABLE_PREFIX": os.environ["RELAYBOX_DJANGO_TEST_PREFIX"],
    "TRANSPORT": "database",
    "RELAY": {"poll_interval": 0.2},
}

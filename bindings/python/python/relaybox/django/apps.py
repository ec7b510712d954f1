"""The Django app of relaybox: add ``"relaybox.django"`` to ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig


class RelayboxConfig(AppConfig):
    """relaybox's tables (migration ``relaybox.0001_initial``) and management commands."""

    name = "relaybox.django"
    label = "relaybox"
    verbose_name = "relaybox"
    default_auto_field = "django.db.models.BigAutoField"

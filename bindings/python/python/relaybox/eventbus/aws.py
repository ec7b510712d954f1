"""AWS connection settings shared by the SNS publisher and the SQS subscriber.

Each setting comes from its argument, then the environment:

=====================  =============================================================
setting                environment
=====================  =============================================================
``region``             the topic ARN's, then ``AWS_REGION``, ``AWS_DEFAULT_REGION``
``endpoint_url``       ``RELAYBOX_AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL``
``profile``            ``AWS_PROFILE``
credentials            the AWS SDK's default chain (environment, profile, role)
=====================  =============================================================

Explicit credentials (``aws_access_key_id`` / ``aws_secret_access_key`` /
``aws_session_token``) are never shown in ``repr``; the core redacts them in
its logs and errors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError

__all__ = ["AwsSettings", "config_error", "topic_name_of_arn"]


def config_error(message: str) -> ConfigError:
    """A :class:`relaybox.ConfigError` with the core's ``invalid_config`` code."""
    error = ConfigError(message)
    error.code = "invalid_config"
    return error


def _env(*names: str) -> Optional[str]:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def topic_name_of_arn(arn: str) -> str:
    """``arn:aws:sns:<region>:<account>:<name>`` → ``<name>``; ConfigError if malformed."""
    parts = arn.split(":")
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "sns" or not parts[5]:
        raise config_error(
            f"topic_arn {arn!r} is not an SNS topic ARN (arn:aws:sns:region:id:name)"
        )
    return parts[5]


@dataclass(frozen=True)
class AwsSettings:
    """Where and as whom relaybox talks to AWS (or a stand-in such as moto)."""

    region: Optional[str] = None
    """AWS region (``us-east-1``)."""
    endpoint_url: Optional[str] = None
    """Endpoint of SNS/SQS (``http://127.0.0.1:5000`` for moto); ``None``: AWS's."""
    profile: Optional[str] = None
    """Named profile of the AWS config files."""
    aws_access_key_id: Optional[str] = field(default=None, repr=False)
    """Access key id (``None``: the SDK's default credentials chain)."""
    aws_secret_access_key: Optional[str] = field(default=None, repr=False)
    """Secret access key."""
    aws_session_token: Optional[str] = field(default=None, repr=False)
    """Session token of temporary credentials."""

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], *, default_region: Optional[str] = None
    ) -> AwsSettings:
        """Read ``region``, ``endpoint_url``, ``profile`` and the credentials from ``config``.

        ``default_region`` (the topic ARN's region) comes before the environment.

        A ``connection_url`` of the form ``sqs://KEY:SECRET@`` gives the
        credentials too. Missing values come from the environment.
        """
        key = config.get("aws_access_key_id")
        secret = config.get("aws_secret_access_key")
        url = config.get("connection_url")
        if url:
            parts = urlsplit(str(url))
            if parts.scheme not in ("sqs", "sns", "https", "http"):
                raise config_error(f"connection_url: unsupported scheme {parts.scheme!r}")
            if parts.username:
                key = key or unquote(parts.username)
            if parts.password:
                secret = secret or unquote(parts.password)
        if bool(key) != bool(secret):
            raise config_error("aws_access_key_id and aws_secret_access_key must be given together")
        return cls(
            region=config.get("region")
            or default_region
            or _env("AWS_REGION", "AWS_DEFAULT_REGION"),
            endpoint_url=config.get("endpoint_url")
            or _env("RELAYBOX_AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL"),
            profile=config.get("profile") or _env("AWS_PROFILE"),
            aws_access_key_id=key or None,
            aws_secret_access_key=secret or None,
            aws_session_token=config.get("aws_session_token") or None,
        )

    def to_json(self) -> dict[str, Any]:
        """The connection part of the core's ``sns`` / ``sqs`` settings."""
        settings: dict[str, Any] = {}
        if self.region:
            settings["region"] = self.region
        if self.endpoint_url:
            settings["endpoint_url"] = self.endpoint_url
        if self.profile:
            settings["profile"] = self.profile
        if self.aws_access_key_id and self.aws_secret_access_key:
            settings["access_key_id"] = self.aws_access_key_id
            settings["secret_access_key"] = self.aws_secret_access_key
            if self.aws_session_token:
                settings["session_token"] = self.aws_session_token
        return settings

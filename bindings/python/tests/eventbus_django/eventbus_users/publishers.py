"""The seed's publisher, on the test run's topic in moto."""

from __future__ import annotations

import os

from relaybox.eventbus import AmazonSNSPublisher

user_publisher = AmazonSNSPublisher(
    name="UserService",
    config={
        "topic_arn": os.environ["EVENTBUS_DJANGO_TOPIC_ARN"],
        "region": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    },
)

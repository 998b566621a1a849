"""The one module that imports boto3 for the platform's own use: S3 clients for the code store
(``functions_app.code_storage``) and for the buckets whose events run functions
(``functions_app.bucket_notifications``); SQS clients for queue mappings (``functions_app.queue_sources``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

# boto3 has no type hints: a client is Any.
S3Client = Any


class StoreError(Exception):
    """An S3 call failed: the store's error code (NoSuchBucket, InvalidAccessKeyId, …) and message, or why it could
    not be reached."""


def s3_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str = "",
    secret_access_key: str = "",
    timeout_s: float | None = None,
) -> S3Client:
    """A client; with no keys, boto3 finds credentials its usual way (environment, profile, instance role)."""
    import boto3
    from botocore.config import Config

    config = (
        Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 2}) if timeout_s else None
    )
    keys = {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key} if access_key_id else {}
    return boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config, **keys)


def s3_objects(client: S3Client, *, bucket: str, prefix: str) -> Any:
    """The bucket's objects under ``prefix``, a page (ListObjectsV2's ``Contents``) at a time."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            yield page.get("Contents", [])
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise StoreError(f"{error.get('Code', 'Error')}: {error.get('Message', exc)}") from None
    except BotoCoreError as exc:
        raise StoreError(str(exc)) from None


def s3_endpoint_check(endpoint_url: str) -> None:
    """ValueError when boto3 would refuse the endpoint (a host name it cannot use, say)."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1", config=Config(signature_version=UNSIGNED))


def sqs_client(*, queue_url: str, region: str, access_key_id: str, secret_access_key: str, timeout_s: float) -> Any:
    """A client of the queue's own endpoint (its URL's scheme and host: AWS's, ElasticMQ's, …), with the mapping's
    keys (never boto3's default credentials). Reads wait past the long poll."""
    import boto3
    from botocore.config import Config

    parts = urlsplit(queue_url)
    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s + SQS_WAIT_S, retries={"max_attempts": 2})
    return boto3.client(
        "sqs",
        endpoint_url=f"{parts.scheme}://{parts.netloc}",
        region_name=region or "us-east-1",
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )


SQS_WAIT_S = 1  # a receive's long poll: short, so that a stop is heard within it


def sqs_receive(client: Any, queue_url: str, count: int) -> list[dict[str, Any]]:
    """Up to ``count`` (at most 10) messages with all their attributes, long-polling SQS_WAIT_S."""
    return _sqs_call(
        lambda: client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(count, 10),
            WaitTimeSeconds=SQS_WAIT_S,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
    )


def sqs_delete(client: Any, queue_url: str, receipts: list[tuple[str, str]]) -> None:
    """Delete messages by (id, receipt handle), ten to a call."""
    for start in range(0, len(receipts), 10):
        entries = [
            {"Id": str(n), "ReceiptHandle": handle} for n, (_, handle) in enumerate(receipts[start : start + 10])
        ]
        _sqs_call(lambda entries=entries: client.delete_message_batch(QueueUrl=queue_url, Entries=entries))


def sqs_waiting(client: Any, queue_url: str) -> int:
    """Messages visible in the queue, and in flight (received, not deleted): its lag."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    found = _sqs_call(lambda: client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"])
    return sum(int(found.get(name, 0)) for name in names)


def _sqs_call(call: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise StoreError(f"{error.get('Code', 'Error')}: {error.get('Message', exc)}") from None
    except (BotoCoreError, ValueError) as exc:
        raise StoreError(str(exc)) from None

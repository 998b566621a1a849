"""The one module that imports boto3 for the platform's own use: S3 clients for the code store
(``functions_app.code_storage``) and for the buckets whose events run functions
(``functions_app.bucket_notifications``)."""

from __future__ import annotations

from typing import Any

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

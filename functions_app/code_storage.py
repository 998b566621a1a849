"""Where artifact bytes live: the filesystem by default, an S3-compatible bucket when CODE_S3_BUCKET is set.

Its S3 client comes from ``functions_app.aws``, the one module that imports boto3.
"""

from __future__ import annotations

import os
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings

from console.exceptions import CodeStorageError
from functions_app.aws import s3_client
from functions_app.code import tree_remove, zip_extract


class CodeStore(Protocol):
    def put(self, sha256: str, data: bytes) -> None: ...

    def get(self, sha256: str) -> bytes: ...


class FilesystemCodeStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sha256: str) -> Path:
        return self.root / "artifacts" / sha256[:2] / f"{sha256}.zip"

    def put(self, sha256: str, data: bytes) -> None:
        path = self._path(sha256)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half an artifact.
        fd, tmp = tempfile.mkstemp(dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)

    def get(self, sha256: str) -> bytes:
        try:
            return self._path(sha256).read_bytes()
        except FileNotFoundError:
            raise CodeStorageError(f"Code artifact {sha256} is missing from storage.") from None


class S3CodeStore:
    # ``client``: a boto3 S3 client (boto3 has no type hints: Any), or a test's stand-in.
    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None = None, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.client = client or s3_client(endpoint_url=endpoint_url)

    def _key(self, sha256: str) -> str:
        return f"{self.prefix}{sha256}.zip"

    def put(self, sha256: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(sha256), Body=data, ChecksumAlgorithm="SHA256")
        except (BotoCoreError, ClientError) as exc:
            raise CodeStorageError(f"Could not store the code in S3: {exc}") from None

    def get(self, sha256: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(sha256))["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise CodeStorageError(f"Could not read code artifact {sha256} from S3: {exc}") from None


@lru_cache(maxsize=1)
def code_store() -> CodeStore:
    if settings.CODE_S3_BUCKET:
        return S3CodeStore(settings.CODE_S3_BUCKET, settings.CODE_S3_PREFIX, settings.CODE_S3_ENDPOINT_URL)
    return FilesystemCodeStore(settings.CODE_STORAGE_DIR)


_extract_lock = threading.Lock()


def code_extracted_dir(sha256: str) -> Path:
    """The artifact unpacked (once per host) into a read-only directory an executor can mount."""
    target = settings.CODE_STORAGE_DIR / "extracted" / sha256
    if target.exists():
        return target
    with _extract_lock:
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
        try:
            zip_extract(code_store().get(sha256), staging)
            staging.chmod(0o755)
            try:
                os.replace(staging, target)
            except OSError:
                # Another process (a second worker on this host) put the same artifact in place first.
                if not target.exists():
                    raise
        finally:
            tree_remove(staging)
    return target

from __future__ import annotations

import io

import boto3
import pytest
from botocore.stub import Stubber

from console.exceptions import CodeStorageError
from functions_app import code_storage
from functions_app.code_storage import FilesystemCodeStore, S3CodeStore, code_extracted_dir
from functions_app.tests.zips import make_zip

SHA = "ab" * 32


def test_the_filesystem_store_round_trips_and_keeps_the_first_copy(tmp_path):
    store = FilesystemCodeStore(tmp_path)
    store.put(SHA, b"zip-bytes")
    store.put(SHA, b"other")
    assert store.get(SHA) == b"zip-bytes"


def test_the_filesystem_store_names_a_missing_artifact(tmp_path):
    with pytest.raises(CodeStorageError, match=SHA):
        FilesystemCodeStore(tmp_path).get(SHA)


def test_the_s3_store_puts_and_gets_by_content_hash():
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    store = S3CodeStore("bucket", "code/", client=client)
    with Stubber(client) as stub:
        stub.add_response(
            "put_object",
            {},
            {"Bucket": "bucket", "Key": f"code/{SHA}.zip", "Body": b"zip-bytes", "ChecksumAlgorithm": "SHA256"},
        )
        stub.add_response(
            "get_object", {"Body": io.BytesIO(b"zip-bytes")}, {"Bucket": "bucket", "Key": f"code/{SHA}.zip"}
        )
        store.put(SHA, b"zip-bytes")
        assert store.get(SHA) == b"zip-bytes"
        stub.assert_no_pending_responses()


def test_an_s3_failure_becomes_a_clear_storage_error():
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    store = S3CodeStore("bucket", "code/", client=client)
    with Stubber(client) as stub:
        stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
        with pytest.raises(CodeStorageError, match="NoSuchKey"):
            store.get(SHA)


def test_settings_choose_s3_when_a_bucket_is_configured(settings):
    settings.CODE_S3_BUCKET = "my-bucket"
    code_storage.code_store.cache_clear()
    store = code_storage.code_store()
    assert isinstance(store, S3CodeStore) and store.bucket == "my-bucket"


def test_an_artifact_is_extracted_once_into_its_own_directory(settings):
    data = make_zip({"app.py": "x = 1\n"})
    code_storage.code_store().put(SHA, data)
    first = code_extracted_dir(SHA)
    assert (first / "app.py").read_text() == "x = 1\n"
    assert code_extracted_dir(SHA) == first

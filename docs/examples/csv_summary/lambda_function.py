"""A running per-key summary of the CSV files dropped into a bucket (README: "Bucket notifications").

Each CSV row is ``key,value``; the summary object (SUMMARY_KEY, in the same bucket) keeps, per key, the count,
sum, min and max of its values, and which files it has counted: a retried event (asynchronous calls are retried)
counts nothing twice. Run it with reserved concurrency 1, so that two files arriving together update the summary
one after the other.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any
from urllib.parse import unquote_plus

import boto3

SUMMARY_KEY = os.environ.get("SUMMARY_KEY", "summary/totals.json")
s3 = boto3.client(
    "s3",
    endpoint_url=os.environ.get("STORE_ENDPOINT") or None,
    aws_access_key_id=os.environ.get("STORE_ACCESS_KEY_ID"),
    aws_secret_access_key=os.environ.get("STORE_SECRET_ACCESS_KEY"),
    region_name=os.environ.get("STORE_REGION", "us-east-1"),
)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    summary: dict[str, Any] | None = None
    for record in event["Records"]:
        bucket = record["s3"]["bucket"]["name"]
        key = unquote_plus(record["s3"]["object"]["key"])  # S3 sends keys URL-encoded, spaces as '+'
        summary = load_summary(bucket)
        counted = f"{key}@{record['s3']['object'].get('eTag', '')}"
        if counted in summary["files"]:
            continue
        text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        for row in csv.reader(io.StringIO(text)):
            add_row(summary["totals"], row)
        summary["files"].append(counted)
        s3.put_object(Bucket=bucket, Key=SUMMARY_KEY, Body=json.dumps(summary, indent=1).encode())
    return summary["totals"] if summary else {}


def load_summary(bucket: str) -> dict[str, Any]:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=SUMMARY_KEY)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return {"totals": {}, "files": []}


def add_row(totals: dict[str, dict[str, float]], row: list[str]) -> None:
    if len(row) != 2:
        return
    try:
        value = float(row[1])
    except ValueError:
        return  # a header line
    name = row[0].strip()
    entry = totals.setdefault(name, {"count": 0, "sum": 0.0, "min": value, "max": value})
    entry["count"] += 1
    entry["sum"] += value
    entry["min"] = min(entry["min"], value)
    entry["max"] = max(entry["max"], value)

"""Ephemera's objects in Lambda's output shapes (FunctionConfiguration, AliasConfiguration, …), with Lambda's
semantics: ``CodeSha256`` is the base64 of the zip's SHA-256, ``LastModified`` a string with milliseconds and
``+0000``, ``FunctionArn`` unqualified for `$LATEST` and qualified for a version, and the fields waiters read
(``State``, ``LastUpdateStatus``) always present."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from functions_app.models import DEAD_LETTER, LATEST, Alias, Function, Version
from functions_app.secrets import env_decrypt

PYTHON_LABEL_DEFAULT = "python3.11"


@dataclass(frozen=True)
class Account:
    account_id: str
    region: str

    def function_arn(self, name: str, qualifier: str | None = None) -> str:
        arn = f"arn:aws:lambda:{self.region}:{self.account_id}:function:{name}"
        return arn if not qualifier else f"{arn}:{qualifier}"

    def role_default(self) -> str:
        return f"arn:aws:iam::{self.account_id}:role/ephemera-function"


def last_modified(moment: datetime) -> str:
    """Lambda's LastModified: ``2019-07-17T18:39:33.599+0000`` (a string; botocore does not parse it)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def code_sha256(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def version_revision_id(version: Version) -> str:
    """A version never changes: its revision is a fixed id of its own."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ephemera:version:{version.pk}"))


def function_configuration(account: Account, function: Function, version: Version | None = None) -> dict[str, Any]:
    config: Function | Version = version or function
    qualifier = str(version.number) if version else None
    variables = env_decrypt(config.environment_ciphertext)
    shape: dict[str, Any] = {
        "FunctionName": function.name,
        "FunctionArn": account.function_arn(function.name, qualifier),
        "Runtime": config.runtime_label or PYTHON_LABEL_DEFAULT,
        "Role": config.role or account.role_default(),
        "Handler": config.handler,
        "CodeSize": config.code.size_bytes,
        "Description": config.description,
        "Timeout": config.timeout_s,
        "MemorySize": config.memory_mb,
        "LastModified": last_modified(version.created_at if version else function.updated_at),
        "CodeSha256": code_sha256(config.code.sha256),
        "Version": qualifier or LATEST,
        "TracingConfig": {"Mode": "PassThrough"},
        "RevisionId": version_revision_id(version) if version else str(function.revision_id),
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
        "EphemeralStorage": {"Size": config.ephemeral_storage_mb},
        "SnapStart": {"ApplyOn": "None", "OptimizationStatus": "Off"},
        "LoggingConfig": {"LogFormat": "Text", "LogGroup": f"/aws/lambda/{function.name}"},
    }
    if variables:
        shape["Environment"] = {"Variables": variables}
    return shape


def alias_configuration(account: Account, alias: Alias) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "AliasArn": account.function_arn(alias.function.name, alias.name),
        "Name": alias.name,
        "FunctionVersion": str(alias.version.number),
        "Description": alias.description,
        "RevisionId": str(alias.revision_id),
    }
    if alias.additional_version is not None:
        weights = {str(alias.additional_version.number): alias.additional_weight}
        shape["RoutingConfig"] = {"AdditionalVersionWeights": weights}
    return shape


def event_invoke_config(account: Account, function: Function) -> dict[str, Any]:
    destinations: dict[str, Any] = {}
    for key, value in (("OnSuccess", function.on_success_destination), ("OnFailure", function.on_failure_destination)):
        if value.startswith("function:"):
            destinations[key] = {"Destination": account.function_arn(value.removeprefix("function:"))}
    modified = function.event_invoke_config_at or function.updated_at
    return {
        "LastModified": modified.timestamp(),
        "FunctionArn": account.function_arn(function.name, LATEST),
        "MaximumRetryAttempts": function.max_retry_attempts,
        "MaximumEventAgeInSeconds": function.max_event_age_s,
        "DestinationConfig": destinations,
    }


def destination_from_arn(account: Account, arn: str | None, *, on_failure: bool) -> str:
    """An event invoke config's destination ARN as Ephemera's destination: a function of the same account.
    Without one, failures still go to the dead-letter inbox (nothing is dropped silently)."""
    if not arn:
        return DEAD_LETTER if on_failure else ""
    prefix = f"arn:aws:lambda:{account.region}:{account.account_id}:function:"
    name = arn.removeprefix(prefix)
    if name == arn or ":" in name:
        raise ValueError(
            f"Destination {arn} is not supported: Ephemera sends async results to a function of the same account "
            f"({prefix}<name>, unqualified); failures without one go to the dead-letter inbox."
        )
    return f"function:{name}"


def policy_document(account: Account, function: Function, qualifier: str) -> str:
    statements = [
        {key: value for key, value in statement.items() if key != "qualifier"}
        for statement in function.policy_statements
        if statement.get("qualifier", "") == qualifier
    ]
    return json.dumps({"Version": "2012-10-17", "Id": "default", "Statement": statements})

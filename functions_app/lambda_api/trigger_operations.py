"""Lambda's operations for what calls a function: function URL configs (functions_app/http_triggers.py) and event
source mappings of streams (functions_app/stream_sources.py), in Lambda's shapes. A Kinesis stream's ARN names the
account's Ephemera stream of that name; an SQS mapping needs the queue's URL and keys, which Lambda's API has no
words for, so it is made in the native API or the console."""

from __future__ import annotations

import re
from typing import Any

from functions_app import event_sources, http_triggers, stream_sources
from functions_app.lambda_api.errors import invalid
from functions_app.lambda_api.operations import Call, Reply, function_ref, operation, page_of
from functions_app.lambda_api.shapes import Account, last_modified
from functions_app.models import DEAD_LETTER, LATEST, EventSourceKind, EventSourceMapping, FunctionUrl

# ---- function URLs ----------------------------------------------------------------------------------------------

# Lambda's Cors members and Ephemera's CORS fields (functions_app/cors.py).
_CORS_FIELDS = {
    "AllowCredentials": "allow_credentials",
    "AllowHeaders": "allow_headers",
    "AllowMethods": "allow_methods",
    "AllowOrigins": "allow_origins",
    "ExposeHeaders": "expose_headers",
    "MaxAge": "max_age",
}


def _auth_type(value: str) -> str:
    if value == "AWS_IAM":
        raise invalid(
            "AuthType AWS_IAM: Ephemera's function URLs are NONE (public) or TOKEN (the owner's API key, set in the "
            "native API or the console)."
        )
    return value


def _cors_in(cors: dict[str, Any] | None) -> dict[str, Any]:
    return {_CORS_FIELDS[name]: value for name, value in (cors or {}).items() if name in _CORS_FIELDS}


def _cors_out(cors: dict[str, Any]) -> dict[str, Any]:
    shape = {member: cors[name] for member, name in _CORS_FIELDS.items() if cors.get(name) not in (None, [], 0)}
    if cors.get("allow_credentials"):
        shape["AllowCredentials"] = True
    return shape


def url_config(call: Call, url: FunctionUrl) -> dict[str, Any]:
    qualifier = url.alias.name if url.alias else None
    shape: dict[str, Any] = {
        "FunctionUrl": http_triggers.function_url_address(
            url=url, scheme=call.scheme, host=call.headers.get("host", "localhost")
        ),
        "FunctionArn": call.account.function_arn(url.function.name, qualifier),
        "AuthType": "NONE" if url.auth_type == "NONE" else "AWS_IAM",
        "CreationTime": last_modified(url.created_at),
        "LastModifiedTime": last_modified(url.updated_at),
        "InvokeMode": url.invoke_mode,
    }
    if url.cors:
        shape["Cors"] = _cors_out(url.cors)
    return shape


def _url(call: Call, params: dict[str, Any]) -> FunctionUrl:
    ref = function_ref(call, params["FunctionName"], params.get("Qualifier"))
    return http_triggers.function_url_get(function=ref.function, qualifier=ref.qualifier or "")


@operation("CreateFunctionUrlConfig")
def create_function_url_config(call: Call, params: dict[str, Any]) -> Reply:
    ref = function_ref(call, params["FunctionName"], params.get("Qualifier"))
    url = http_triggers.function_url_create(
        function=ref.function,
        qualifier=ref.qualifier or "",
        auth_type=_auth_type(params["AuthType"]),
        cors=_cors_in(params.get("Cors")),
        invoke_mode=params.get("InvokeMode", "BUFFERED"),
    )
    return Reply(201, url_config(call, url))


@operation("GetFunctionUrlConfig")
def get_function_url_config(call: Call, params: dict[str, Any]) -> Reply:
    return Reply(200, url_config(call, _url(call, params)))


@operation("UpdateFunctionUrlConfig")
def update_function_url_config(call: Call, params: dict[str, Any]) -> Reply:
    changes: dict[str, Any] = {}
    if "AuthType" in params:
        changes["auth_type"] = _auth_type(params["AuthType"])
    if "Cors" in params:
        changes["cors"] = _cors_in(params["Cors"])
    if "InvokeMode" in params:
        changes["invoke_mode"] = params["InvokeMode"]
    url = http_triggers.function_url_update(url=_url(call, params), **changes)
    return Reply(200, url_config(call, url))


@operation("DeleteFunctionUrlConfig")
def delete_function_url_config(call: Call, params: dict[str, Any]) -> Reply:
    http_triggers.function_url_delete(url=_url(call, params))
    return Reply(204)


@operation("ListFunctionUrlConfigs")
def list_function_url_configs(call: Call, params: dict[str, Any]) -> Reply:
    function = function_ref(call, params["FunctionName"]).function
    page, following = page_of(http_triggers.function_url_list(function=function), params)
    body: dict[str, Any] = {"FunctionUrlConfigs": [url_config(call, url) for url in page]}
    return Reply(200, body | ({"NextMarker": following} if following else {}))


# ---- event source mappings --------------------------------------------------------------------------------------

_KINESIS_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:kinesis:(?P<region>[^:]+):(?P<account>\d{12}):stream/(?P<name>[^/]+)$")
# Lambda's members and Ephemera's mapping settings (functions_app/stream_sources.py SETTINGS).
_MAPPING_FIELDS = {
    "BatchSize": "batch_size",
    "MaximumBatchingWindowInSeconds": "batching_window_s",
    "MaximumRetryAttempts": "max_retry_attempts",
    "MaximumRecordAgeInSeconds": "max_record_age_s",
    "BisectBatchOnFunctionError": "bisect_on_error",
    "Enabled": "enabled",
}


def _stream_of(call: Call, arn: str) -> str:
    found = _KINESIS_ARN.match(arn)
    if found and found["account"] == call.account.account_id and found["region"] == call.account.region:
        return found["name"]
    if arn.startswith("arn:aws:sqs:"):
        raise invalid(
            "SQS mappings need the queue's URL and keys, which Lambda's API has no words for: create them in the "
            "native API (POST /api/v1/event-source-mappings/) or the console."
        )
    raise invalid(
        f"EventSourceArn must name a stream of your account: arn:aws:kinesis:{call.account.region}:"
        f"{call.account.account_id}:stream/<name> (an Ephemera stream)."
    )


def _mapping_fields(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    fields = {name: params[member] for member, name in _MAPPING_FIELDS.items() if member in params}
    if "FunctionResponseTypes" in params:
        fields["report_batch_item_failures"] = "ReportBatchItemFailures" in params["FunctionResponseTypes"]
    if "DestinationConfig" in params:
        arn = ((params["DestinationConfig"] or {}).get("OnFailure") or {}).get("Destination")
        fields["on_failure"] = _on_failure(call, arn)
    return fields


def _on_failure(call: Call, arn: str | None) -> str:
    if not arn:
        return DEAD_LETTER
    prefix = f"arn:aws:lambda:{call.account.region}:{call.account.account_id}:function:"
    name = arn.removeprefix(prefix)
    if name == arn or ":" in name:
        raise invalid(f"OnFailure: Ephemera sends failed batches to a function of your account ({prefix}<name>).")
    return f"function:{name}"


def mapping_configuration(account: Account, mapping: EventSourceMapping) -> dict[str, Any]:
    function = mapping.function
    stream_arn = f"arn:aws:kinesis:{account.region}:{account.account_id}:stream/{mapping.source}"
    shape: dict[str, Any] = {
        "UUID": str(mapping.uuid),
        "EventSourceArn": stream_arn if mapping.kind == EventSourceKind.REDIS_STREAM else mapping.source,
        "FunctionArn": account.function_arn(function.name, mapping.qualifier or None),
        "BatchSize": mapping.batch_size,
        "MaximumBatchingWindowInSeconds": mapping.batching_window_s,
        "LastModified": mapping.updated_at.timestamp(),
        "LastProcessingResult": mapping.last_processing_result or "No records processed",
        "State": stream_sources.mapping_state(mapping=mapping),
        "StateTransitionReason": "User action",
        "MaximumRetryAttempts": mapping.max_retry_attempts,
        "MaximumRecordAgeInSeconds": mapping.max_record_age_s,
        "BisectBatchOnFunctionError": mapping.bisect_on_error,
        "FunctionResponseTypes": ["ReportBatchItemFailures"] if mapping.report_batch_item_failures else [],
    }
    if mapping.starting_position:
        shape["StartingPosition"] = mapping.starting_position
    if mapping.on_failure.startswith("function:"):
        destination = account.function_arn(mapping.on_failure.removeprefix("function:"))
        shape["DestinationConfig"] = {"OnFailure": {"Destination": destination}}
    return shape


def _mapping(call: Call, params: dict[str, Any]) -> EventSourceMapping:
    return stream_sources.mapping_get(owner_id=call.owner.pk, uuid=params["UUID"])


@operation("CreateEventSourceMapping")
def create_event_source_mapping(call: Call, params: dict[str, Any]) -> Reply:
    if not params.get("EventSourceArn"):
        raise invalid("EventSourceArn is required: the stream to read.")
    stream = _stream_of(call, params["EventSourceArn"])
    ref = function_ref(call, params["FunctionName"])
    fields = _mapping_fields(call, params)
    if ref.qualifier and ref.qualifier != LATEST:
        fields["qualifier"] = ref.qualifier
    mapping = event_sources.mapping_create(
        function=ref.function,
        stream=stream,
        starting_position=params.get("StartingPosition", "LATEST"),
        **fields,
    )
    return Reply(202, mapping_configuration(call.account, mapping))


@operation("GetEventSourceMapping")
def get_event_source_mapping(call: Call, params: dict[str, Any]) -> Reply:
    return Reply(200, mapping_configuration(call.account, _mapping(call, params)))


@operation("UpdateEventSourceMapping")
def update_event_source_mapping(call: Call, params: dict[str, Any]) -> Reply:
    mapping = _mapping(call, params)
    fields = _mapping_fields(call, params)
    if params.get("FunctionName"):
        ref = function_ref(call, params["FunctionName"])
        if ref.function.pk != mapping.function_id:
            raise invalid("A mapping's function cannot be changed: delete the mapping and create another.")
        fields["qualifier"] = ref.qualifier or ""
    mapping = event_sources.mapping_update(mapping=mapping, **fields)
    return Reply(202, mapping_configuration(call.account, mapping))


@operation("DeleteEventSourceMapping")
def delete_event_source_mapping(call: Call, params: dict[str, Any]) -> Reply:
    mapping = _mapping(call, params)
    shape = mapping_configuration(call.account, mapping) | {"State": "Deleting"}
    stream_sources.mapping_delete(mapping=mapping)
    return Reply(202, shape)


@operation("ListEventSourceMappings")
def list_event_source_mappings(call: Call, params: dict[str, Any]) -> Reply:
    mappings = EventSourceMapping.objects.select_related("function").filter(function__owner=call.owner)
    if params.get("FunctionName"):
        mappings = mappings.filter(function=function_ref(call, params["FunctionName"]).function)
    if params.get("EventSourceArn"):
        mappings = mappings.filter(source=_stream_of(call, params["EventSourceArn"]))
    page, following = page_of(list(mappings.order_by("created_at", "pk")), params)
    body: dict[str, Any] = {"EventSourceMappings": [mapping_configuration(call.account, m) for m in page]}
    return Reply(200, body | ({"NextMarker": following} if following else {}))

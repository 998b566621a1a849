"""Lambda's operations over Ephemera's services: each one reads the input botocore's model describes (already
parsed and checked, functions_app/lambda_api/model.py) and answers in Lambda's output shape. The rules themselves
(names, limits, revisions, tenancy) are the services', shared with the native API."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from console.exceptions import ResourceNotFound
from functions_app import services
from functions_app.accept import DRY_RUN
from functions_app.invoke import function_invoke
from functions_app.lambda_api import shapes
from functions_app.lambda_api.code_links import code_location
from functions_app.lambda_api.errors import LambdaError, conflict, invalid, not_found
from functions_app.lambda_api.invoke import INVOCATION_TYPES, client_context_of, invoke_reply, sdk_idempotency_key
from functions_app.lambda_api.shapes import Account
from functions_app.models import DEAD_LETTER, LATEST, Alias, CodeArtifact, Function, Version

# Lambda's documented limits (its GetAccountSettings): code per function zipped, unzipped, and in all.
CODE_SIZE_ZIPPED = 52_428_800
CODE_SIZE_UNZIPPED = 262_144_000
TOTAL_CODE_SIZE = 80_530_636_800
LIST_MAX_ITEMS_DEFAULT = 50


@dataclass(frozen=True)
class Call:
    owner: User
    account: Account
    headers: dict[str, str]  # lower-case names
    scheme: str = "http"  # as the client reached this server (for the addresses of function URLs)


@dataclass
class Reply:
    status: int
    body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


Operation = Callable[[Call, dict[str, Any]], Reply]
OPERATIONS: dict[str, Operation] = {}


def operation(name: str) -> Callable[[Operation], Operation]:
    def register(handler: Operation) -> Operation:
        OPERATIONS[name] = handler
        return handler

    return register


# ---- naming ---------------------------------------------------------------------------------------------------

_FUNCTION_REF = re.compile(
    r"^(?:arn:aws[a-zA-Z-]*:lambda:(?P<region>[a-z0-9-]+):)?(?:(?P<account>\d{12}):)?(?:function:)?"
    r"(?P<name>[A-Za-z0-9_.-]+)(?::(?P<qualifier>\$LATEST|[A-Za-z0-9_-]+))?$"
)


@dataclass(frozen=True)
class FunctionRef:
    function: Function
    qualifier: str | None  # None: not named


def function_ref(call: Call, name: str, qualifier: str | None = None) -> FunctionRef:
    """The caller's function that ``name`` names (a name, ``name:qualifier``, a partial or a full ARN), and the
    qualifier (from the name or the Qualifier parameter, which must agree). Another account's function is not
    found, as on the native API."""
    found = _FUNCTION_REF.match(name)
    if found is None:
        raise not_found(f"Function not found: {call.account.function_arn(name)}")
    derived = found["qualifier"]
    if derived and qualifier and derived != qualifier:
        raise invalid("The derived qualifier from the function name does not match the specified qualifier.")
    qualifier = qualifier or derived
    arn = call.account.function_arn(found["name"], qualifier)
    foreign = (found["account"] or call.account.account_id) != call.account.account_id
    if foreign or (found["region"] or call.account.region) != call.account.region:
        raise not_found(f"Function not found: {arn}")
    function = Function.objects.select_related("code").filter(owner=call.owner, name=found["name"]).first()
    if function is None:
        raise not_found(f"Function not found: {arn}")
    return FunctionRef(function, qualifier)


def version_of(call: Call, ref: FunctionRef) -> Version | None:
    """The published version a qualifier names (an alias: the version it points at); None for `$LATEST`."""
    qualifier = ref.qualifier
    if qualifier in (None, "", LATEST):
        return None
    arn = call.account.function_arn(ref.function.name, qualifier)
    if qualifier.isascii() and qualifier.isdigit():
        version = ref.function.versions.select_related("code").filter(number=int(qualifier)).first()
    else:
        alias = Alias.objects.select_related("version__code").filter(function=ref.function, name=qualifier).first()
        version = alias.version if alias else None
    if version is None:
        raise not_found(f"Function not found: {arn}")
    return version


def _configuration(call: Call, function: Function, version: Version | None = None) -> dict[str, Any]:
    return shapes.function_configuration(call.account, function, version)


# ---- pages ----------------------------------------------------------------------------------------------------


def page_of(items: list[Any], params: dict[str, Any]) -> tuple[list[Any], str | None]:
    """A page of ``items`` from the opaque Marker, at most MaxItems long, and the next page's marker."""
    start = 0
    if params.get("Marker"):
        try:
            start = int(base64.urlsafe_b64decode(params["Marker"].encode()).decode())
        except (ValueError, UnicodeDecodeError, binascii.Error):
            start = -1
        if start < 0:
            raise invalid("Marker is not one this API gave: pass the NextMarker of the previous page.")
    size = params.get("MaxItems") or LIST_MAX_ITEMS_DEFAULT
    end = start + size
    following = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else None
    return items[start:end], following


def _listed(key: str, page: list[Any], following: str | None) -> dict[str, Any]:
    return {key: page, **({"NextMarker": following} if following else {})}


# ---- functions ------------------------------------------------------------------------------------------------

_UNSUPPORTED_CREATE = {
    "ImageConfig": "container images",
    "FileSystemConfigs": "file systems",
    "KMSKeyArn": "customer-managed KMS keys",
    "CodeSigningConfigArn": "code signing",
    "DeadLetterConfig": "SQS/SNS dead-letter queues (failed events go to the dead-letter inbox; see the console)",
}


def _refuse_unsupported(params: dict[str, Any]) -> None:
    for name, what in _UNSUPPORTED_CREATE.items():
        value = params.get(name)
        if value and (not isinstance(value, dict) or any(value.values())):
            raise invalid(f"{name}: Ephemera does not support {what}.")
    if params.get("Layers"):
        raise invalid("Layers: Ephemera does not support layers yet; package dependencies in the zip.")
    vpc = params.get("VpcConfig") or {}
    if vpc.get("SubnetIds") or vpc.get("SecurityGroupIds"):
        raise invalid("VpcConfig: Ephemera functions have no VPC; outbound network is a per-function setting.")
    if params.get("PackageType", "Zip") != "Zip":
        raise invalid("PackageType: Ephemera runs Zip packages only, not container images.")
    if params.get("Architectures") not in (None, ["x86_64"]):
        raise invalid("Architectures: Ephemera's executors are x86_64.")
    if (params.get("TracingConfig") or {}).get("Mode", "PassThrough") != "PassThrough":
        raise invalid("TracingConfig: Ephemera has no X-Ray tracing; use PassThrough.")
    if (params.get("SnapStart") or {}).get("ApplyOn", "None") != "None":
        raise invalid("SnapStart: not needed here: every cold start is a fork of a pre-imported runtime.")


def _runtime_label(runtime: Any) -> str:
    if not isinstance(runtime, str) or not services.RUNTIME_LABEL_RE.match(runtime):
        raise invalid(
            f"The runtime parameter of {runtime} is not supported by Ephemera: it runs Python functions "
            "(python3.x runtimes run on the platform's Python)."
        )
    return runtime


def _config_changes(params: dict[str, Any]) -> dict[str, Any]:
    """Lambda's configuration members as Ephemera's service fields (only those given)."""
    changes: dict[str, Any] = {}
    names = {"Description": "description", "Timeout": "timeout_s", "MemorySize": "memory_mb", "Role": "role"}
    for member, name in names.items():
        if member in params:
            changes[name] = params[member]
    if "Runtime" in params:
        changes["runtime_label"] = _runtime_label(params["Runtime"])
    if "EphemeralStorage" in params:
        changes["ephemeral_storage_mb"] = params["EphemeralStorage"]["Size"]
    return changes


def _zip_of(code: dict[str, Any]) -> bytes:
    if code.get("S3Bucket") or code.get("S3Key") or code.get("ImageUri"):
        raise invalid("Code: send the package as ZipFile; Ephemera does not fetch code from S3 or a registry.")
    if not code.get("ZipFile"):
        raise invalid("Code: ZipFile is required (the base64 of the .zip package).")
    return base64.b64decode(code["ZipFile"])


def _role_check(role: Any) -> None:
    if not re.fullmatch(r"arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+", role or ""):
        raise invalid(f"The role defined for the function cannot be assumed by Lambda: {role!r} is not a role ARN.")


@operation("CreateFunction")
def create_function(call: Call, params: dict[str, Any]) -> Reply:
    _refuse_unsupported(params)
    _role_check(params["Role"])
    if "Handler" not in params:
        raise invalid("Handler is required for a Zip package.")
    name_ref = _FUNCTION_REF.match(params["FunctionName"])
    if (
        name_ref is None
        or name_ref["qualifier"]
        or (name_ref["account"] or call.account.account_id) != call.account.account_id
    ):
        raise invalid("FunctionName: name the new function by its name or its unqualified ARN in your account.")
    changes = _config_changes({"Runtime": shapes.PYTHON_LABEL_DEFAULT, **params})
    tags = params.get("Tags") or {}
    services.tags_validate(tags)
    with transaction.atomic():  # the function, its tags and its first version, or nothing
        function = services.function_create(
            owner=call.owner,
            name=name_ref["name"],
            handler=params["Handler"],
            code=services.CodeUpload(zip_bytes=_zip_of(params["Code"])),
            environment=(params.get("Environment") or {}).get("Variables") or {},
            **changes,
        )
        if tags:
            services.function_tags_set(function=function, add=tags)
        version = services.version_publish(function=function)[0] if params.get("Publish") else None
    return Reply(201, _configuration(call, function, version))


@operation("GetFunction")
def get_function(call: Call, params: dict[str, Any]) -> Reply:
    ref = function_ref(call, params["FunctionName"], params.get("Qualifier"))
    function, version = ref.function, version_of(call, ref)
    body: dict[str, Any] = {
        "Configuration": _configuration(call, function, version),
        "Code": {"RepositoryType": "S3", "Location": _code_location(call, (version or function).code.sha256)},
        "Tags": function.tags,
    }
    if function.reserved_concurrency is not None:
        body["Concurrency"] = {"ReservedConcurrentExecutions": function.reserved_concurrency}
    return Reply(200, body)


def _code_location(call: Call, sha256: str) -> str:
    origin = f"{call.scheme}://{call.headers.get('host', 'localhost')}"
    return code_location(origin=origin, owner_id=call.owner.pk, sha256=sha256)


@operation("GetFunctionConfiguration")
def get_function_configuration(call: Call, params: dict[str, Any]) -> Reply:
    ref = function_ref(call, params["FunctionName"], params.get("Qualifier"))
    return Reply(200, _configuration(call, ref.function, version_of(call, ref)))


@operation("ListFunctions")
def list_functions(call: Call, params: dict[str, Any]) -> Reply:
    functions = list(Function.objects.select_related("code").filter(owner=call.owner).order_by("name"))
    configurations: list[tuple[Function, Version | None]] = [(function, None) for function in functions]
    if params.get("FunctionVersion") == "ALL":
        versions = Version.objects.select_related("code").filter(function__in=functions).order_by("number")
        by_function: dict[int, list[Version]] = {}
        for version in versions:
            by_function.setdefault(version.function_id, []).append(version)
        configurations = [
            (function, version) for function in functions for version in [None, *by_function.get(function.pk, [])]
        ]
    page, following = page_of(configurations, params)
    return Reply(200, _listed("Functions", [_configuration(call, f, v) for f, v in page], following))


@operation("UpdateFunctionCode")
def update_function_code(call: Call, params: dict[str, Any]) -> Reply:
    _refuse_unsupported({"Architectures": params.get("Architectures")})
    ref = function_ref(call, params["FunctionName"])
    if ref.qualifier:
        raise invalid("UpdateFunctionCode changes $LATEST: name the function without a qualifier.")
    zip_bytes = _zip_of(params)
    if params.get("DryRun"):
        services.artifact_store(zip_bytes=zip_bytes, handler=ref.function.handler)
        return Reply(200, _configuration(call, ref.function))
    function = services.function_update_code(
        function=ref.function, code=services.CodeUpload(zip_bytes=zip_bytes), revision_id=params.get("RevisionId")
    )
    return _published_if_asked(call, function, params)


def _published_if_asked(call: Call, function: Function, params: dict[str, Any]) -> Reply:
    function = Function.objects.select_related("code").get(pk=function.pk)
    if params.get("Publish"):
        version, _ = services.version_publish(function=function)
        return Reply(200, _configuration(call, function, version))
    return Reply(200, _configuration(call, function))


@operation("UpdateFunctionConfiguration")
def update_function_configuration(call: Call, params: dict[str, Any]) -> Reply:
    _refuse_unsupported(params)
    ref = function_ref(call, params["FunctionName"])
    if ref.qualifier:
        raise invalid("UpdateFunctionConfiguration changes $LATEST: name the function without a qualifier.")
    if "Role" in params:
        _role_check(params["Role"])
    changes = _config_changes(params)
    if "Handler" in params:
        changes["handler"] = params["Handler"]
    environment = None
    if "Environment" in params:
        environment = (params["Environment"] or {}).get("Variables") or {}
    function = services.function_update_configuration(
        function=ref.function, revision_id=params.get("RevisionId"), environment=environment, **changes
    )
    return _published_if_asked(call, function, {})


@operation("DeleteFunction")
def delete_function(call: Call, params: dict[str, Any]) -> Reply:
    ref = function_ref(call, params["FunctionName"], params.get("Qualifier"))
    if ref.qualifier in (None, ""):
        services.function_delete(function=ref.function)
        return Reply(204)
    if ref.qualifier == LATEST:
        raise invalid("$LATEST version cannot be deleted without deleting the function.")
    if not ref.qualifier.isdigit():
        raise invalid("Deletion of aliases is not supported by DeleteFunction; use DeleteAlias.")
    version = version_of(call, ref)
    assert version is not None  # a number names a version or is not found
    services.version_delete(version=version)
    return Reply(204)


# ---- invoke ---------------------------------------------------------------------------------------------------


@operation("Invoke")
def invoke(call: Call, params: dict[str, Any]) -> Reply:
    ref = function_ref(call, params["FunctionName"], params.get("Qualifier"))
    invocation_type = INVOCATION_TYPES[params.get("InvocationType", "RequestResponse")]
    answer = function_invoke(
        owner=call.owner,
        function=ref.function,
        qualifier=ref.qualifier or "",
        raw_payload=params.get("Payload", b""),
        invocation_type=invocation_type,
        idempotency_key="" if invocation_type == DRY_RUN else sdk_idempotency_key(call.headers),
        client_context=client_context_of(params.get("ClientContext")),
    )
    if answer.invocation is None:
        return Reply(204)
    if answer.outcome is None:
        return Reply(202, b"", {"x-amzn-RequestId": str(answer.invocation.id)})
    status, body, headers = invoke_reply(answer.outcome, with_log=params.get("LogType") == "Tail")
    return Reply(status, body, headers)


# ---- versions and aliases -------------------------------------------------------------------------------------


@operation("PublishVersion")
def publish_version(call: Call, params: dict[str, Any]) -> Reply:
    ref = function_ref(call, params["FunctionName"])
    expected = params.get("CodeSha256")
    current = shapes.code_sha256(ref.function.code.sha256)
    if expected and expected != current:
        raise LambdaError(
            "PreconditionFailedException",
            f"CodeSHA256 ({expected}) is different from current CodeSHA256 in $LATEST ({current}). Please try "
            "again from a previous read.",
            status=412,
        )
    version, _ = services.version_publish(
        function=ref.function, description=params.get("Description"), revision_id=params.get("RevisionId")
    )
    return Reply(201, _configuration(call, ref.function, version))


@operation("ListVersionsByFunction")
def list_versions_by_function(call: Call, params: dict[str, Any]) -> Reply:
    function = function_ref(call, params["FunctionName"]).function
    versions: list[Version | None] = [None, *function.versions.select_related("code").order_by("number")]
    page, following = page_of(versions, params)
    return Reply(200, _listed("Versions", [_configuration(call, function, v) for v in page], following))


def _version_number(value: str) -> int:
    if value == LATEST:
        raise invalid("Ephemera aliases point at published versions: publish one (PublishVersion) and use its number.")
    if not value.isascii() or not value.isdigit():
        raise invalid(f"FunctionVersion {value!r} is not a version number.")
    return int(value)


def _routing(params: dict[str, Any]) -> dict[str, Any]:
    if "RoutingConfig" not in params:
        return {}
    weights = (params["RoutingConfig"] or {}).get("AdditionalVersionWeights") or {}
    if len(weights) > 1:
        raise invalid("RoutingConfig: an alias routes to at most one additional version.")
    if not weights:
        return {"additional_version": None}
    ((version, weight),) = weights.items()
    return {"additional_version": _version_number(version), "additional_weight": weight}


def _alias(call: Call, params: dict[str, Any]) -> Alias:
    function = function_ref(call, params["FunctionName"]).function
    alias = (
        Alias.objects.select_related("function", "version", "additional_version")
        .filter(function=function, name=params["Name"])
        .first()
    )
    if alias is None:
        raise not_found(f"Alias not found: {call.account.function_arn(function.name, params['Name'])}")
    return alias


@operation("CreateAlias")
def create_alias(call: Call, params: dict[str, Any]) -> Reply:
    function = function_ref(call, params["FunctionName"]).function
    if Alias.objects.filter(function=function, name=params["Name"]).exists():
        raise conflict(f"Alias already exists: {call.account.function_arn(function.name, params['Name'])}")
    alias = services.alias_create(
        function=function,
        name=params["Name"],
        version=_version_number(params["FunctionVersion"]),
        description=params.get("Description", ""),
        **_routing(params),
    )
    return Reply(201, shapes.alias_configuration(call.account, alias))


@operation("GetAlias")
def get_alias(call: Call, params: dict[str, Any]) -> Reply:
    return Reply(200, shapes.alias_configuration(call.account, _alias(call, params)))


@operation("UpdateAlias")
def update_alias(call: Call, params: dict[str, Any]) -> Reply:
    alias = services.alias_update(
        alias=_alias(call, params),
        version=_version_number(params["FunctionVersion"]) if params.get("FunctionVersion") else None,
        description=params.get("Description"),
        revision_id=params.get("RevisionId"),
        **_routing(params),
    )
    alias = Alias.objects.select_related("function", "version", "additional_version").get(pk=alias.pk)
    return Reply(200, shapes.alias_configuration(call.account, alias))


@operation("DeleteAlias")
def delete_alias(call: Call, params: dict[str, Any]) -> Reply:
    try:
        alias = _alias(call, params)
    except LambdaError as exc:
        if exc.message.startswith("Alias not found"):
            return Reply(204)  # Lambda's DeleteAlias of a missing alias succeeds
        raise
    services.alias_delete(alias=alias)
    return Reply(204)


@operation("ListAliases")
def list_aliases(call: Call, params: dict[str, Any]) -> Reply:
    function = function_ref(call, params["FunctionName"]).function
    aliases = Alias.objects.select_related("function", "version", "additional_version").filter(function=function)
    if params.get("FunctionVersion"):
        aliases = aliases.filter(version__number=_version_number(params["FunctionVersion"]))
    page, following = page_of(list(aliases.order_by("name")), params)
    return Reply(200, _listed("Aliases", [shapes.alias_configuration(call.account, a) for a in page], following))


# ---- concurrency and the account ------------------------------------------------------------------------------


def _reserved_elsewhere(function: Function) -> int:
    others = Function.objects.filter(owner=function.owner_id).exclude(pk=function.pk)
    return others.aggregate(total=Sum("reserved_concurrency"))["total"] or 0


def _unqualified(call: Call, name: str) -> Function:
    ref = function_ref(call, name)
    if ref.qualifier:
        raise invalid("Reserved concurrency belongs to the function: name it without a qualifier.")
    return ref.function


@operation("PutFunctionConcurrency")
def put_function_concurrency(call: Call, params: dict[str, Any]) -> Reply:
    function = _unqualified(call, params["FunctionName"])
    wanted = params["ReservedConcurrentExecutions"]
    room = settings.ACCOUNT_CONCURRENCY_LIMIT - _reserved_elsewhere(function)
    if wanted > room:
        raise invalid(
            f"Specified ReservedConcurrentExecutions for function decreases account's "
            f"UnreservedConcurrentExecution below its minimum value of [0]: at most {room} can be reserved."
        )
    services.function_update_configuration(function=function, reserved_concurrency=wanted)
    return Reply(200, {"ReservedConcurrentExecutions": wanted})


@operation("GetFunctionConcurrency")
def get_function_concurrency(call: Call, params: dict[str, Any]) -> Reply:
    function = _unqualified(call, params["FunctionName"])
    if function.reserved_concurrency is None:
        return Reply(200, {})
    return Reply(200, {"ReservedConcurrentExecutions": function.reserved_concurrency})


@operation("DeleteFunctionConcurrency")
def delete_function_concurrency(call: Call, params: dict[str, Any]) -> Reply:
    function = _unqualified(call, params["FunctionName"])
    services.function_update_configuration(function=function, reserved_concurrency=None)
    return Reply(204)


@operation("GetAccountSettings")
def get_account_settings(call: Call, params: dict[str, Any]) -> Reply:
    functions = Function.objects.filter(owner=call.owner)
    code_ids = set(functions.values_list("code_id", flat=True)) | set(
        Version.objects.filter(function__owner=call.owner).values_list("code_id", flat=True)
    )
    code_size = CodeArtifact.objects.filter(pk__in=code_ids).aggregate(total=Sum("size_bytes"))["total"] or 0
    reserved = functions.aggregate(total=Sum("reserved_concurrency"))["total"] or 0
    limit = settings.ACCOUNT_CONCURRENCY_LIMIT
    return Reply(
        200,
        {
            "AccountLimit": {
                "TotalCodeSize": TOTAL_CODE_SIZE,
                "CodeSizeUnzipped": CODE_SIZE_UNZIPPED,
                "CodeSizeZipped": CODE_SIZE_ZIPPED,
                "ConcurrentExecutions": limit,
                "UnreservedConcurrentExecutions": limit - reserved,
            },
            "AccountUsage": {"TotalCodeSize": code_size, "FunctionCount": functions.count()},
        },
    )


# ---- tags, policy, code signing -------------------------------------------------------------------------------


def _tagged(call: Call, resource: str) -> Function:
    ref = function_ref(call, resource)
    if ref.qualifier:
        raise invalid("Tags belong to the function: name it by its unqualified ARN.")
    return ref.function


@operation("TagResource")
def tag_resource(call: Call, params: dict[str, Any]) -> Reply:
    services.function_tags_set(function=_tagged(call, params["Resource"]), add=params["Tags"])
    return Reply(204)


@operation("UntagResource")
def untag_resource(call: Call, params: dict[str, Any]) -> Reply:
    services.function_tags_set(function=_tagged(call, params["Resource"]), remove=params["TagKeys"])
    return Reply(204)


@operation("ListTags")
def list_tags(call: Call, params: dict[str, Any]) -> Reply:
    return Reply(200, {"Tags": _tagged(call, params["Resource"]).tags})


def _policy_qualifier(call: Call, ref: FunctionRef) -> str:
    if ref.qualifier not in (None, "", LATEST):
        version_of(call, ref)  # it must exist
    return "" if ref.qualifier in (None, LATEST) else ref.qualifier


@operation("AddPermission")
def add_permission(call: Call, params: dict[str, Any]) -> Reply:
    ref = function_ref(call, params["FunctionName"], params.get("Qualifier"))
    qualifier = _policy_qualifier(call, ref)
    principal = params["Principal"]
    statement: dict[str, Any] = {
        "Sid": params["StatementId"],
        "Effect": "Allow",
        "Principal": {"Service": principal} if principal.endswith(".amazonaws.com") else {"AWS": principal},
        "Action": params["Action"],
        "Resource": call.account.function_arn(ref.function.name, qualifier or None),
    }
    condition: dict[str, Any] = {}
    if params.get("SourceArn"):
        condition["ArnLike"] = {"AWS:SourceArn": params["SourceArn"]}
    if params.get("SourceAccount"):
        condition["StringEquals"] = {"AWS:SourceAccount": params["SourceAccount"]}
    if params.get("FunctionUrlAuthType"):
        condition.setdefault("StringEquals", {})["lambda:FunctionUrlAuthType"] = params["FunctionUrlAuthType"]
    if condition:
        statement["Condition"] = condition
    services.function_policy_statement_add(
        function=ref.function, statement={**statement, "qualifier": qualifier}, revision_id=params.get("RevisionId")
    )
    return Reply(201, {"Statement": json.dumps(statement)})


@operation("GetPolicy")
def get_policy(call: Call, params: dict[str, Any]) -> Reply:
    ref = function_ref(call, params["FunctionName"], params.get("Qualifier"))
    qualifier = _policy_qualifier(call, ref)
    if not any(statement.get("qualifier", "") == qualifier for statement in ref.function.policy_statements):
        raise not_found("The resource you requested does not exist.")
    policy = shapes.policy_document(call.account, ref.function, qualifier)
    return Reply(200, {"Policy": policy, "RevisionId": str(ref.function.revision_id)})


@operation("RemovePermission")
def remove_permission(call: Call, params: dict[str, Any]) -> Reply:
    ref = function_ref(call, params["FunctionName"], params.get("Qualifier"))
    try:
        services.function_policy_statement_remove(
            function=ref.function,
            sid=params["StatementId"],
            qualifier=_policy_qualifier(call, ref),
            revision_id=params.get("RevisionId"),
        )
    except ResourceNotFound:
        raise not_found("The resource you requested does not exist.") from None
    return Reply(204)


@operation("GetFunctionCodeSigningConfig")
def get_function_code_signing_config(call: Call, params: dict[str, Any]) -> Reply:
    function = function_ref(call, params["FunctionName"]).function
    return Reply(200, {"CodeSigningConfigArn": "", "FunctionName": function.name})


# ---- asynchronous invocation settings -------------------------------------------------------------------------


def _event_invoke_function(call: Call, params: dict[str, Any]) -> Function:
    ref = function_ref(call, params["FunctionName"], params.get("Qualifier"))
    if ref.qualifier not in (None, "", LATEST):
        raise invalid("Ephemera keeps one asynchronous invocation configuration per function: use $LATEST.")
    return ref.function


def _event_invoke_write(call: Call, params: dict[str, Any], *, replace: bool) -> Reply:
    function = _event_invoke_function(call, params)
    changes: dict[str, Any] = {"event_invoke_config_at": timezone.now()}
    defaults = {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 21600}
    for member, name in (
        ("MaximumRetryAttempts", "max_retry_attempts"),
        ("MaximumEventAgeInSeconds", "max_event_age_s"),
    ):
        if member in params or replace:
            changes[name] = params.get(member, defaults[member])
    if "DestinationConfig" in params or replace:
        destinations = params.get("DestinationConfig") or {}
        try:
            for member, name in (("OnSuccess", "on_success_destination"), ("OnFailure", "on_failure_destination")):
                arn = (destinations.get(member) or {}).get("Destination")
                changes[name] = shapes.destination_from_arn(call.account, arn, on_failure=member == "OnFailure")
        except ValueError as exc:
            raise invalid(str(exc)) from None
    function = services.function_update_configuration(function=function, **changes)
    return Reply(200, shapes.event_invoke_config(call.account, function))


@operation("PutFunctionEventInvokeConfig")
def put_function_event_invoke_config(call: Call, params: dict[str, Any]) -> Reply:
    return _event_invoke_write(call, params, replace=True)


@operation("UpdateFunctionEventInvokeConfig")
def update_function_event_invoke_config(call: Call, params: dict[str, Any]) -> Reply:
    if _event_invoke_function(call, params).event_invoke_config_at is None:
        raise _no_event_invoke_config(call, params)
    return _event_invoke_write(call, params, replace=False)


def _no_event_invoke_config(call: Call, params: dict[str, Any]) -> LambdaError:
    name = function_ref(call, params["FunctionName"]).function.name
    return not_found(f"The function {call.account.function_arn(name)} doesn't have an EventInvokeConfig")


@operation("GetFunctionEventInvokeConfig")
def get_function_event_invoke_config(call: Call, params: dict[str, Any]) -> Reply:
    function = _event_invoke_function(call, params)
    if function.event_invoke_config_at is None:
        raise _no_event_invoke_config(call, params)
    return Reply(200, shapes.event_invoke_config(call.account, function))


@operation("DeleteFunctionEventInvokeConfig")
def delete_function_event_invoke_config(call: Call, params: dict[str, Any]) -> Reply:
    function = _event_invoke_function(call, params)
    if function.event_invoke_config_at is None:
        raise _no_event_invoke_config(call, params)
    services.function_update_configuration(
        function=function,
        max_retry_attempts=2,
        max_event_age_s=21600,
        on_success_destination="",
        on_failure_destination=DEAD_LETTER,
        event_invoke_config_at=None,
    )
    return Reply(204)


@operation("ListFunctionEventInvokeConfigs")
def list_function_event_invoke_configs(call: Call, params: dict[str, Any]) -> Reply:
    function = _event_invoke_function(call, params)
    configs = [shapes.event_invoke_config(call.account, function)] if function.event_invoke_config_at else []
    page, following = page_of(configs, params)
    return Reply(200, _listed("FunctionEventInvokeConfigs", page, following))

"""Importing AWS SAM templates (docs/sam.md): the ``AWS::Serverless::Function`` resources of a template become
functions, created or updated, with the triggers Ephemera has for their events; everything else is listed as
skipped, with the reason. ``sam deploy`` needs CloudFormation and S3, which a Lambda-only server does not have: a
template is imported instead, by ``manage.py import_sam``, ``POST /api/v1/sam-imports/`` or the console.

The whole template is read and checked first (every function's code, handler and configuration); only then is
anything written, in one transaction, so a template with one bad function changes nothing."""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from console.exceptions import ServiceError
from functions_app import code as code_pkg
from functions_app import event_sources, http_apis, schedules, services, stream_sources
from functions_app.bucket_notifications import bucket_notification_create, bucket_notification_update
from functions_app.lambda_api.errors import in_lambda_words
from functions_app.lambda_api.model import all_text_storable
from functions_app.models import BucketNotification, EventSourceKind, EventSourceMapping, Function, HttpApi, Schedule

TEMPLATE_MAX_BYTES = 1024 * 1024
FUNCTION_RESOURCE = "AWS::Serverless::Function"
_PYTHON = re.compile(r"^python3\.\d{1,2}$")
# The properties of AWS::Serverless::Function that are imported; the others are reported as skipped.
_IMPORTED = {
    "Handler",
    "Runtime",
    "CodeUri",
    "InlineCode",
    "MemorySize",
    "Timeout",
    "Description",
    "FunctionName",
    "Environment",
    "EphemeralStorage",
    "ReservedConcurrentExecutions",
    "EventInvokeConfig",
    "Events",
    "Tags",
    "AutoPublishAlias",
    "Role",
    "Architectures",
}


class SamTemplateError(ServiceError):
    type = "InvalidTemplate"


@dataclass(frozen=True)
class QueueKeys:
    """The keys SQS events' queues are read with (a template holds none), and, for an SQS-API server other than
    AWS's (ElasticMQ, say), its address: a queue's URL is then ``{endpoint_url}/{account}/{name}``."""

    access_key_id: str
    secret_access_key: str
    endpoint_url: str = ""


@dataclass
class SamImportReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    triggers: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"item", "reason"}
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False

    def skip(self, item: str, reason: str) -> None:
        self.skipped.append({"item": item, "reason": reason})

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "triggers": self.triggers,
            "skipped": self.skipped,
            "notes": self.notes,
            "dry_run": self.dry_run,
        }


def queue_keys_of(access_key_id: str, secret_access_key: str, endpoint_url: str = "") -> QueueKeys | None:
    """The SQS keys an import was given, or None; one without the other is an error."""
    if not access_key_id and not secret_access_key:
        if endpoint_url:
            raise ServiceError("An SQS endpoint needs the queue's keys too (the access key id and the secret).")
        return None
    if not access_key_id or not secret_access_key:
        raise ServiceError("Give the SQS access key id and its secret together.")
    return QueueKeys(access_key_id, secret_access_key, endpoint_url)


# ---- reading the template ---------------------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short intrinsics (!Ref, !Sub, !GetAtt, …) read as their long forms. Aliases
    (``*name``) are refused: walking a few nested ones copies the same node exponentially often (a YAML bomb)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("YAML aliases (*name) are not accepted in a template")
        return super().compose_node(parent, index)


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def template_parse(text: str) -> dict[str, Any]:
    if len(text.encode()) > TEMPLATE_MAX_BYTES:
        raise SamTemplateError(f"The template is larger than {TEMPLATE_MAX_BYTES} bytes.")
    try:
        template = yaml.load(text, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader with CloudFormation's tags
    except yaml.YAMLError as exc:
        raise SamTemplateError(f"The template is not YAML or JSON: {exc}") from None
    except RecursionError:
        raise SamTemplateError("The template is nested too deeply.") from None
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict) or not template["Resources"]:
        raise SamTemplateError("The template has no Resources.")
    for section in ("Parameters", "Globals"):
        if not isinstance(template.get(section) or {}, dict):
            raise SamTemplateError(f"{section} must be a map.")
    if not all_text_storable(template):
        raise SamTemplateError("The template holds a lone surrogate (\\ud800) or a NUL character, which is not text.")
    return template


class _Unresolved(Exception):
    """An intrinsic whose value only CloudFormation knows (an attribute of a resource it would create, say)."""


@dataclass
class _Context:
    parameters: dict[str, Any]
    resources: dict[str, Any]

    def resolve(self, value: Any) -> Any:
        """``value`` with the intrinsics whose values are known replaced; _Unresolved for one that is not."""
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, argument),) = value.items()
            if key == "Ref":
                return self._ref(argument)
            if key == "Fn::Sub":
                return self._sub(argument)
            if key == "Fn::Join" and isinstance(argument, list) and len(argument) == 2:
                parts = self.resolve(argument[1])
                if not isinstance(parts, list):
                    raise SamTemplateError(
                        f"!Join takes a separator and a list, not {json.dumps(argument, default=str)[:100]}."
                    )
                return str(argument[0]).join(str(part) for part in parts)
            if isinstance(key, str) and (key.startswith("Fn::") or key == "Condition"):
                raise _Unresolved(f"{key} {json.dumps(argument, default=str)[:100]}")
        return {key: self.resolve(item) for key, item in value.items()}

    def _ref(self, name: Any) -> Any:
        if not isinstance(name, str):
            raise SamTemplateError(f"!Ref takes a name, not {json.dumps(name, default=str)[:100]}.")
        if name in self.parameters:
            return self.parameters[name]
        resource = self.resources.get(name)
        if isinstance(resource, dict) and resource.get("Type") == "AWS::S3::Bucket":
            return self.resolve((resource.get("Properties") or {}).get("BucketName")) or str(name).lower()
        raise _Unresolved(f"Ref {name}")

    def _sub(self, argument: Any) -> str:
        if isinstance(argument, str):
            text, variables = argument, {}
        elif (
            isinstance(argument, list)
            and len(argument) == 2
            and isinstance(argument[0], str)
            and isinstance(argument[1], dict)
        ):
            text, variables = argument
        else:
            raise SamTemplateError(
                f"!Sub takes a text, or a text and a map of variables, not {json.dumps(argument, default=str)[:100]}."
            )

        def replace(found: re.Match[str]) -> str:
            name = found.group(1)
            if name in variables:
                return str(self.resolve(variables[name]))
            return str(self._ref(name))

        return re.sub(r"\$\{([^}!]+)\}", replace, text)


def _context(template: dict[str, Any], owner: User, stack_name: str) -> _Context:
    parameters: dict[str, Any] = {
        "AWS::Region": settings.AWS_REGION,
        "AWS::AccountId": f"{owner.pk:012d}",
        "AWS::StackName": stack_name,
        "AWS::Partition": "aws",
        "AWS::URLSuffix": "amazonaws.com",
    }
    for name, spec in (template.get("Parameters") or {}).items():
        if isinstance(spec, dict) and "Default" in spec:
            parameters[name] = spec["Default"]
    return _Context(parameters, template["Resources"])


def _merged(base: Any, override: Any) -> Any:
    """Globals merged into a function's properties: maps deeply, anything else the function's own."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {key: _merged(base.get(key), override[key]) if key in base else override[key] for key in override} | {
            key: value for key, value in base.items() if key not in override
        }
    return override


# ---- planning -------------------------------------------------------------------------------------------------


@dataclass
class _FunctionPlan:
    logical_id: str
    name: str
    handler: str
    zip_bytes: bytes
    config: dict[str, Any]
    environment: dict[str, str]
    tags: dict[str, str]
    alias: str
    events: list[tuple[str, dict[str, Any]]]  # (event logical id, resolved event)


def _function_name(logical_id: str, properties: dict[str, Any]) -> str:
    """FunctionName as given (Lambda's rules: it is refused, never renamed), else the logical id."""
    name = properties.get("FunctionName") or logical_id
    services.function_name_validate(name)
    return str(name)


def _code_of(logical_id: str, properties: dict[str, Any], base_dir: Path | None) -> bytes:
    if properties.get("InlineCode") is not None:
        return code_pkg.zip_from_files({"index.py": str(properties["InlineCode"])})
    uri = properties.get("CodeUri")
    if uri is None:
        raise SamTemplateError(f"{logical_id}: give CodeUri (a folder or a .zip beside the template) or InlineCode.")
    if not isinstance(uri, str) or uri.startswith("s3://"):
        raise SamTemplateError(
            f"{logical_id}: CodeUri {json.dumps(uri)[:120]} is in S3; Ephemera imports code from the template's "
            "folder (a directory or a .zip)."
        )
    if base_dir is None:
        raise SamTemplateError(
            f"{logical_id}: CodeUri {uri} needs the template's folder: upload the project as a zip with "
            "template.yaml at its top, or use InlineCode."
        )
    root = base_dir.resolve()
    path = (root / uri).resolve()
    if root != path and root not in path.parents:
        raise SamTemplateError(f"{logical_id}: CodeUri {uri} is outside the template's folder.")
    if path.is_dir():
        return _zip_directory(path)
    if path.is_file() and path.suffix == ".zip":
        return path.read_bytes()
    raise SamTemplateError(f"{logical_id}: CodeUri {uri} is neither a folder nor a .zip file in the template's folder.")


def _zip_directory(folder: Path) -> bytes:
    """The folder's files as a zip, in a fixed order with fixed times (the same folder makes the same zip, so a
    re-import of unchanged code changes nothing)."""
    buffer = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink() or not path.is_file() or "__pycache__" in path.parts:
                continue
            total += path.stat().st_size
            if total > code_pkg.UNZIPPED_MAX_BYTES:
                raise SamTemplateError(f"{folder.name}: the code is larger than {code_pkg.UNZIPPED_MAX_BYTES} bytes.")
            info = zipfile.ZipInfo(str(path.relative_to(folder)), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def _config_of(logical_id: str, properties: dict[str, Any], report: SamImportReport) -> dict[str, Any]:
    config: dict[str, Any] = {}
    runtime = properties.get("Runtime", "python3.11")
    if not isinstance(runtime, str) or not _PYTHON.match(runtime):
        raise SamTemplateError(f"{logical_id}: Runtime {runtime} is not Python; Ephemera runs Python functions.")
    config["runtime_label"] = runtime
    names = {"MemorySize": "memory_mb", "Timeout": "timeout_s", "Description": "description"}
    for member, name in names.items():
        if member in properties:
            config[name] = properties[member]
    if isinstance(properties.get("Role"), str):
        config["role"] = properties["Role"]
    if "EphemeralStorage" in properties:
        config["ephemeral_storage_mb"] = (properties["EphemeralStorage"] or {}).get("Size", 512)
    if "ReservedConcurrentExecutions" in properties:
        config["reserved_concurrency"] = properties["ReservedConcurrentExecutions"]
    invoke_config = properties.get("EventInvokeConfig") or {}
    if "MaximumRetryAttempts" in invoke_config:
        config["max_retry_attempts"] = invoke_config["MaximumRetryAttempts"]
    if "MaximumEventAgeInSeconds" in invoke_config:
        config["max_event_age_s"] = invoke_config["MaximumEventAgeInSeconds"]
    if invoke_config.get("DestinationConfig"):
        report.skip(f"{logical_id}.EventInvokeConfig.DestinationConfig", "destinations are set in the console or API")
    if properties.get("Architectures") not in (None, ["x86_64"]):
        report.skip(f"{logical_id}.Architectures", "Ephemera's executors are x86_64; it runs there")
    services.config_validate(config)
    return config


def _plan_function(
    logical_id: str, properties: dict[str, Any], context: _Context, base_dir: Path | None, report: SamImportReport
) -> _FunctionPlan:
    for name in sorted(set(properties) - _IMPORTED):
        report.skip(f"{logical_id}.{name}", _SKIPPED_PROPERTIES.get(name, "Ephemera has no counterpart"))
    if properties.get("PackageType", "Zip") != "Zip":
        raise SamTemplateError(f"{logical_id}: container images are not supported; use a Zip package.")
    for name in ("Environment", "Events", "Tags", "EventInvokeConfig", "EphemeralStorage"):
        if properties.get(name) is not None and not isinstance(properties[name], dict):
            raise SamTemplateError(f"{logical_id}: {name} must be a map.")
    variables = (properties.get("Environment") or {}).get("Variables") or {}
    if not isinstance(variables, dict):
        raise SamTemplateError(f"{logical_id}: Environment.Variables must be a map.")
    handler = properties.get("Handler")
    if not isinstance(handler, str):
        raise SamTemplateError(f"{logical_id}: Handler is required (module.function).")
    config = _config_of(logical_id, properties, report)
    zip_bytes = _code_of(logical_id, properties, base_dir)
    summary = code_pkg.zip_inspect(zip_bytes)
    module = code_pkg.handler_validate(handler, summary)
    code_pkg.syntax_check(code_pkg.zip_read_member(zip_bytes, module), module)
    environment = {str(key): str(value) for key, value in variables.items()}
    services.environment_validate(environment)
    events = []
    for event_id, event in (properties.get("Events") or {}).items():
        try:
            events.append((event_id, context.resolve(event)))
        except _Unresolved as exc:
            report.skip(f"{logical_id}.Events.{event_id}", f"{exc} is known only to CloudFormation")
    return _FunctionPlan(
        logical_id=logical_id,
        name=_function_name(logical_id, properties),
        handler=handler,
        zip_bytes=zip_bytes,
        config=config,
        environment=environment,
        tags={str(key): str(value) for key, value in (properties.get("Tags") or {}).items()},
        alias=str(properties.get("AutoPublishAlias") or ""),
        events=events,
    )


_SKIPPED_PROPERTIES = {
    "Layers": "layers are not supported; package dependencies with the code",
    "Policies": "Ephemera has no IAM; a function reaches what its network setting allows",
    "VpcConfig": "functions have no VPC; outbound network is a per-function setting",
    "DeploymentPreference": "gradual deployments are weighted aliases here: set the alias's routing yourself",
    "ProvisionedConcurrencyConfig": "every cold start is a fork of a pre-imported runtime (a few ms)",
    "DeadLetterQueue": "failed events go to the dead-letter inbox",
    "Tracing": "no X-Ray",
    "KmsKeyArn": "environments are encrypted with the platform's keys",
    "FunctionUrlConfig": "make the function URL in the console or API (its auth types differ)",
    "LoggingConfig": "logs are kept with each invocation",
    "PackageType": "Zip only",
}


def _plan(
    template: dict[str, Any], context: _Context, base_dir: Path | None, report: SamImportReport
) -> list[_FunctionPlan]:
    globals_ = (template.get("Globals") or {}).get("Function") or {}
    plans = []
    for logical_id, resource in template["Resources"].items():
        kind = resource.get("Type") if isinstance(resource, dict) else None
        if kind != FUNCTION_RESOURCE:
            if kind not in ("AWS::S3::Bucket", "AWS::Serverless::HttpApi", "AWS::Serverless::Api"):
                report.skip(logical_id, f"{kind} resources are not imported (only {FUNCTION_RESOURCE})")
            continue
        own = resource.get("Properties") or {}
        if not isinstance(own, dict) or not isinstance(globals_, dict):
            raise SamTemplateError(f"{logical_id}: Properties (and Globals.Function) must be maps.")
        merged = _merged(globals_, own)
        try:  # each event is resolved on its own: one that cannot be is skipped, not the function
            properties = context.resolve({key: value for key, value in merged.items() if key != "Events"})
        except _Unresolved as exc:
            raise SamTemplateError(f"{logical_id}: {exc} is known only to CloudFormation.") from None
        properties["Events"] = merged.get("Events") or {}
        try:
            plans.append(_plan_function(logical_id, properties, context, base_dir, report))
        except SamTemplateError:
            raise
        except ServiceError as exc:
            raise SamTemplateError(f"{logical_id}: {in_lambda_words(exc.message)}") from None
        except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a property of an unexpected type
            raise SamTemplateError(f"{logical_id}: a property has an unexpected type or value ({exc}).") from None
    names = [plan.name for plan in plans]
    if len(set(names)) != len(names):
        raise SamTemplateError(f"Two functions of the template have one name: {', '.join(names)}.")
    if not plans:
        raise SamTemplateError(f"The template has no {FUNCTION_RESOURCE} resources.")
    return plans


# ---- writing ------------------------------------------------------------------------------------------------------


def sam_import(
    *,
    owner: User,
    template_text: str,
    base_dir: Path | None = None,
    stack_name: str = "sam",
    dry_run: bool = False,
    queue_keys: QueueKeys | None = None,
    progress: Callable[[str], None] | None = None,
) -> SamImportReport:
    """Create or update the template's functions and their triggers (see the module's docstring)."""
    say = progress or (lambda _: None)
    report = SamImportReport(dry_run=dry_run)
    template = template_parse(template_text)
    stack = re.sub(r"[^A-Za-z0-9._-]", "-", stack_name)[:128] or "sam"
    plans = _plan(template, _context(template, owner, stack), base_dir, report)
    routes: list[dict[str, Any]] = []
    # A dry run takes the very same path, every write checked by its service, and is rolled back at the end.
    with transaction.atomic():
        for plan in plans:
            say(f"function {plan.name}")
            try:
                function = _function_write(owner, plan, report)
            except SamTemplateError as exc:
                raise SamTemplateError(f"{plan.logical_id}: {exc.message}") from None
            except ServiceError as exc:
                raise SamTemplateError(f"{plan.logical_id}: {in_lambda_words(exc.message)}") from None
            for event_id, event in plan.events:
                event = event if isinstance(event, dict) else {}
                properties: dict[str, Any] = event["Properties"] if isinstance(event.get("Properties"), dict) else {}
                kind = str(event.get("Type"))
                _event_write(_Event(function, plan, event_id, properties, routes, report, queue_keys), kind)
        if routes:
            try:
                _http_api_write(owner, stack, routes, report)
            except ServiceError as exc:
                raise SamTemplateError(f"The HTTP API {stack}: {exc.message}") from None
        if dry_run:
            transaction.set_rollback(True)
    return report


def _function_write(owner: User, plan: _FunctionPlan, report: SamImportReport) -> Function:
    function = Function.objects.select_related("code").filter(owner=owner, name=plan.name).first()
    if function is None:
        function = services.function_create(
            owner=owner,
            name=plan.name,
            handler=plan.handler,
            code=services.CodeUpload(zip_bytes=plan.zip_bytes),
            environment=plan.environment,
            **plan.config,
        )
        report.created.append(plan.name)
    else:
        changed = _changes(function, plan)
        if function.code.sha256 != hashlib.sha256(plan.zip_bytes).hexdigest():
            function = services.function_update_code(
                function=function, code=services.CodeUpload(zip_bytes=plan.zip_bytes)
            )
            changed = True
        (report.updated if changed else report.unchanged).append(plan.name)
    if plan.tags and plan.tags != function.tags:
        services.function_tags_set(function=function, add=plan.tags)
    if plan.alias:
        _alias_publish(function, plan.alias, report)
    return function


def _changes(function: Function, plan: _FunctionPlan) -> bool:
    from functions_app.secrets import env_decrypt

    wanted = {"handler": plan.handler, **plan.config}
    changes = {name: value for name, value in wanted.items() if getattr(function, name) != value}
    environment = plan.environment if env_decrypt(function.environment_ciphertext) != plan.environment else None
    if changes or environment is not None:
        services.function_update_configuration(function=function, environment=environment, **changes)
        return True
    return False


def _alias_publish(function: Function, alias_name: str, report: SamImportReport) -> None:
    function = Function.objects.select_related("code").get(pk=function.pk)
    version, _ = services.version_publish(function=function)
    alias = function.aliases.filter(name=alias_name).first()
    try:
        if alias is None:
            services.alias_create(function=function, name=alias_name, version=version.number)
        elif alias.version_id != version.pk:
            services.alias_update(alias=alias, version=version.number)
    except ServiceError as exc:
        raise SamTemplateError(f"AutoPublishAlias: {exc.message.partition(': ')[2] or exc.message}") from None
    report.triggers.append(f"alias {function.name}:{alias_name} → version {version.number}")


@dataclass(frozen=True)
class _Event:
    """One event of a function, and where its writer puts what it makes."""

    function: Function
    plan: _FunctionPlan
    event_id: str
    properties: dict[str, Any]
    routes: list[dict[str, Any]]  # the HTTP API's routes, written once all functions are
    report: SamImportReport
    queue_keys: QueueKeys | None = None

    @property
    def where(self) -> str:
        return f"{self.plan.logical_id}.Events.{self.event_id}"


def _event_write(event: _Event, kind: str) -> None:
    writer = _EVENT_WRITERS.get(kind)
    if writer is None:
        reason = "the event has no Type" if kind == "None" else f"{kind} events have no counterpart in Ephemera"
        event.report.skip(event.where, _SKIPPED_EVENTS.get(kind, reason))
        return
    try:  # the whole import is undone on an error: say which event it was
        writer(event)
    except SamTemplateError as exc:
        raise SamTemplateError(f"{event.where}: {exc.message}") from None
    except ServiceError as exc:
        raise SamTemplateError(f"{event.where}: {in_lambda_words(exc.message)}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise SamTemplateError(f"{event.where}: a property has an unexpected type or value ({exc}).") from None


def _schedule_write(event: _Event) -> None:
    function, properties = event.function, event.properties
    expression = properties.get("Schedule") or properties.get("ScheduleExpression")
    enabled = properties.get("Enabled", properties.get("State", "ENABLED") != "DISABLED")
    raw_input = properties.get("Input")
    fields: dict[str, Any] = {
        "expression": expression,
        "timezone_name": properties.get("ScheduleExpressionTimezone", "UTC"),
        "enabled": bool(enabled),
        "input": json.loads(raw_input) if isinstance(raw_input, str) else raw_input,
    }
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", str(properties.get("Name") or event.event_id))[:64]
    schedule = Schedule.objects.filter(function=function, name=name).first()
    if schedule is None:
        schedules.schedule_create(function=function, name=name, **fields)
    else:
        schedules.schedule_update(schedule=schedule, **fields)
    event.report.triggers.append(f"schedule {name} ({expression}) → {function.name}")


def _route_add(event: _Event, payload_format: str) -> None:
    properties = event.properties
    method = str(properties.get("Method", "ANY")).upper()
    path = properties.get("Path")
    route_key = f"{'ANY' if method == 'X-AMAZON-APIGATEWAY-ANY-METHOD' else method} {path}" if path else "$default"
    http_apis.route_key_parse(route_key)  # a bad path or method is this event's error
    route = {"route_key": route_key, "function": event.function.name, "payload_format": payload_format}
    if event.plan.alias:
        route["qualifier"] = event.plan.alias
    event.routes.append(route)


def _http_api_route(event: _Event) -> None:
    _route_add(event, str(event.properties.get("PayloadFormatVersion", "2.0")))


def _rest_api_route(event: _Event) -> None:
    _route_add(event, "1.0")


def _http_api_write(owner: User, stack: str, routes: list[dict[str, Any]], report: SamImportReport) -> None:
    """The template's routes on one HTTP API named after the stack; routes of an earlier import with the same key
    are replaced, others kept."""
    api = HttpApi.objects.filter(owner=owner, name=stack).first()
    keys = {route["route_key"] for route in routes}
    if api is None:
        api = http_apis.http_api_create(owner=owner, name=stack, definition={"routes": routes})
    else:
        definition = dict(api.definition)
        kept = [route for route in definition.get("routes", []) if route.get("route_key") not in keys]
        api = http_apis.http_api_update(api=api, definition={**definition, "routes": [*kept, *routes]})
    for route in routes:
        report.triggers.append(f"route {route['route_key']} → {route['function']} (HTTP API {api.name})")


def _s3_write(event: _Event) -> None:
    function, properties = event.function, event.properties
    events = properties.get("Events") or ["s3:ObjectCreated:*"]
    events = [events] if isinstance(events, str) else events
    if not isinstance(events, list) or not all(isinstance(name, str) for name in events):
        raise SamTemplateError("Events is an S3 event name or a list of them.")
    if not isinstance(properties.get("Bucket"), str):
        raise SamTemplateError("Bucket must name a bucket (or !Ref an AWS::S3::Bucket of the template).")
    rules = ((properties.get("Filter") or {}).get("S3Key") or {}).get("Rules") or []
    affixes = {str(rule.get("Name", "")).lower(): str(rule.get("Value", "")) for rule in rules}
    fields: dict[str, Any] = {
        "bucket": properties.get("Bucket"),
        "events": events,
        "prefix": affixes.get("prefix", ""),
        "suffix": affixes.get("suffix", ""),
        "qualifier": event.plan.alias,
    }
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", event.event_id)[:64]
    existing = BucketNotification.objects.filter(function=function, name=name).first()
    if existing is not None:
        bucket_notification_update(notification=existing, **fields)
        event.report.triggers.append(f"bucket notification {name} (s3://{fields['bucket']}) → {function.name}, updated")
        return
    notification, token = bucket_notification_create(function=function, name=name, mode="webhook", **fields)
    if event.report.dry_run:
        event.report.triggers.append(f"bucket notification {name} (s3://{fields['bucket']}) → {function.name}")
        return
    event.report.triggers.append(
        f"bucket notification {name} (s3://{fields['bucket']}) → {function.name}: webhook "
        f"/api/v1/bucket-events/{notification.pk}/ with the token {token} (shown once; point the store's "
        "notifications there)"
    )


def _kinesis_write(event: _Event) -> None:
    function, properties = event.function, event.properties
    stream_arn = str(properties.get("Stream", ""))
    found = re.match(r"^arn:aws[a-zA-Z-]*:kinesis:[^:]*:\d{12}:stream/(?P<name>[^/]+)$", stream_arn)
    if found is None:
        raise SamTemplateError(f"Stream {stream_arn!r} is not a Kinesis stream's ARN.")
    stream = found["name"]
    fields: dict[str, Any] = {
        "batch_size": properties.get("BatchSize", 100),
        "enabled": properties.get("Enabled", True),
    }
    if "MaximumRetryAttempts" in properties:
        fields["max_retry_attempts"] = properties["MaximumRetryAttempts"]
    if "BisectBatchOnFunctionError" in properties:
        fields["bisect_on_error"] = properties["BisectBatchOnFunctionError"]
    existing = EventSourceMapping.objects.filter(function=function, source=stream).first()
    if event.report.dry_run:  # checked without the consumer group a real mapping makes in Redis
        unsaved = existing or EventSourceMapping(function=function, kind=EventSourceKind.REDIS_STREAM, source=stream)
        stream_sources.mapping_configure(unsaved, fields)
    elif existing is None:
        event_sources.mapping_create(
            function=function,
            stream=stream,
            starting_position=properties.get("StartingPosition", "LATEST"),
            **fields,
        )
    else:
        event_sources.mapping_update(mapping=existing, **fields)
    event.report.triggers.append(f"stream mapping {stream} → {function.name}")


_SQS_ARN = re.compile(
    r"^arn:aws[a-zA-Z-]*:sqs:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):(?P<name>[A-Za-z0-9_.-]{1,80})$"
)


def _sqs_write(event: _Event) -> None:
    function, properties, keys = event.function, event.properties, event.queue_keys
    found = _SQS_ARN.match(str(properties.get("Queue", "")))
    if found is None:
        raise SamTemplateError(f"Queue {properties.get('Queue')!r} is not an SQS queue's ARN.")
    if keys is None:
        event.report.skip(
            event.where,
            "an SQS mapping needs the queue's keys, which a template does not hold: import with "
            "--sqs-access-key-id and --sqs-secret-access-key (sqs_access_key_id, sqs_secret_access_key in the API)",
        )
        return
    region, account, name = found["region"], found["account"], found["name"]
    base = keys.endpoint_url.rstrip("/") if keys.endpoint_url else f"https://sqs.{region}.amazonaws.com"
    url = f"{base}/{account}/{name}"
    fields: dict[str, Any] = {"batch_size": properties.get("BatchSize", 10), "enabled": properties.get("Enabled", True)}
    if "MaximumBatchingWindowInSeconds" in properties:
        fields["batching_window_s"] = properties["MaximumBatchingWindowInSeconds"]
    if (properties.get("ScalingConfig") or {}).get("MaximumConcurrency"):
        fields["max_concurrency"] = properties["ScalingConfig"]["MaximumConcurrency"]
    if "FunctionResponseTypes" in properties:
        fields["report_batch_item_failures"] = "ReportBatchItemFailures" in (properties["FunctionResponseTypes"] or [])
    credentials = {"access_key_id": keys.access_key_id, "secret_access_key": keys.secret_access_key, "region": region}
    existing = EventSourceMapping.objects.filter(function=function, source=url).first()
    if existing is None:
        event_sources.mapping_create(function=function, queue_url=url, **credentials, **fields)
    else:
        event_sources.mapping_update(mapping=existing, **credentials, **fields)
    event.report.triggers.append(f"queue mapping {url} → {function.name}")


_EVENT_WRITERS: dict[str, Callable[[_Event], None]] = {
    "Schedule": _schedule_write,
    "ScheduleV2": _schedule_write,
    "HttpApi": _http_api_route,
    "Api": _rest_api_route,
    "S3": _s3_write,
    "Kinesis": _kinesis_write,
    "SQS": _sqs_write,
}
_SKIPPED_EVENTS = {
    "SNS": "Ephemera has no SNS",
    "EventBridgeRule": "Ephemera has no event bus; a schedule covers timed rules",
    "CloudWatchEvent": "Ephemera has no event bus; a schedule covers timed rules",
    "DynamoDB": "Ephemera has no DynamoDB streams",
}


def sam_project_import(
    *,
    owner: User,
    project_zip: bytes,
    stack_name: str = "sam",
    dry_run: bool = False,
    queue_keys: QueueKeys | None = None,
) -> SamImportReport:
    """A SAM project uploaded as a zip (template.yaml at its top, the CodeUri folders beside it): unpacked into a
    private temporary folder, after the checks every code zip passes (no absolute or parent paths, size caps)."""
    import tempfile

    code_pkg.zip_inspect(project_zip)
    with tempfile.TemporaryDirectory(prefix="sam-") as folder, zipfile.ZipFile(io.BytesIO(project_zip)) as project:
        project.extractall(folder)
        root = Path(folder)
        template = next(
            (root / name for name in ("template.yaml", "template.yml", "template.json") if (root / name).is_file()),
            None,
        )
        if template is None:
            raise SamTemplateError("The project zip has no template.yaml (or .yml, .json) at its top.")
        try:
            text = template.read_text()
        except UnicodeDecodeError:
            raise SamTemplateError(f"{template.name} is not UTF-8 text.") from None
        return sam_import(
            owner=owner,
            template_text=text,
            base_dir=root,
            stack_name=stack_name,
            dry_run=dry_run,
            queue_keys=queue_keys,
        )

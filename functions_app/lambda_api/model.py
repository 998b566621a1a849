"""Lambda's wire contract, read from botocore's own service model (the file the SDKs are generated from): the route
of every operation (method, dated path, fixed query), where each input member travels (path, query, header, body,
raw payload) and the constraints the server checks (botocore checks only required members, types and minimums on
the client side; enums, patterns and maxima are the server's)."""

from __future__ import annotations

import base64
import functools
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape

from console.json_api import json_strict_loads
from functions_app.lambda_api.errors import LambdaError


@functools.cache
def lambda_model() -> ServiceModel:
    return botocore.session.get_session().get_service_model("lambda")


@dataclass(frozen=True)
class Route:
    operation: str
    method: str
    pattern: re.Pattern[str]
    fixed_query: tuple[tuple[str, str], ...]
    literal_segments: int


@functools.cache
def routes() -> tuple[Route, ...]:
    """Every operation's route, the most specific first (literal segments over placeholders, a fixed query first)."""
    table = []
    model = lambda_model()
    for name in model.operation_names:
        http = model.operation_model(name).http
        path, _, fixed = http["requestUri"].partition("?")
        segments = path.strip("/").split("/")
        regex = "/".join(_segment_regex(segment) for segment in segments)
        fixed_query = tuple(
            (key, value) for key, _, value in (pair.partition("=") for pair in fixed.split("&") if pair)
        )
        literal = sum(1 for segment in segments if "{" not in segment)
        table.append(Route(name, http["method"], re.compile(f"^/{regex}/?$"), fixed_query, literal))
    table.sort(key=lambda route: (-route.literal_segments, -len(route.fixed_query)))
    return tuple(table)


def _segment_regex(segment: str) -> str:
    if segment.startswith("{") and segment.endswith("+}"):
        return f"(?P<{segment[1:-2]}>.+)"
    if segment.startswith("{"):
        return f"(?P<{segment[1:-1]}>[^/]+)"
    return re.escape(segment)


@dataclass(frozen=True)
class Matched:
    operation: OperationModel
    path_params: dict[str, str]


def route_match(method: str, raw_path: str, query: dict[str, list[str]]) -> Matched | None:
    """The operation a request names, with its path's parameters (decoded), or None when no operation has this
    method and path. Matched on the path as sent, so that an encoded ``/`` stays inside its parameter
    (``f%2Fversions`` names a function, never ListVersionsByFunction)."""
    for route in routes():
        if route.method != method:
            continue
        found = route.pattern.match(raw_path)
        if found and all(query.get(key, [None])[-1] == value for key, value in route.fixed_query):
            params = {name: unquote(value) for name, value in found.groupdict().items()}
            return Matched(lambda_model().operation_model(route.operation), params)
    return None


# ---- input -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireRequest:
    path_params: dict[str, str]
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes


def operation_input(operation: OperationModel, request: WireRequest) -> dict[str, Any]:
    """The operation's input as botocore's client had it: each member read from where the model says it travels,
    converted to its type and checked against the model's constraints."""
    shape = operation.input_shape
    if shape is None:
        return {}
    payload_member = shape.serialization.get("payload")
    params: dict[str, Any] = {}
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        wire_name = member.serialization.get("name", name)
        if location == "uri":
            if wire_name in request.path_params:
                params[name] = request.path_params[wire_name]
        elif location == "querystring":
            if wire_name in request.query:
                values = request.query[wire_name]
                params[name] = values if member.type_name == "list" else _scalar(member, values[-1], wire_name)
        elif location == "header":
            if wire_name.lower() in request.headers:
                params[name] = _scalar(member, request.headers[wire_name.lower()], wire_name)
        elif name == payload_member and member.type_name == "blob":
            params[name] = request.body
    if payload_member is None:
        params.update(_json_members(shape, request.body))
    elif shape.members[payload_member].type_name == "structure" and request.body:
        params[payload_member] = _json_body(request.body)
    problems = shape_problems(shape, params, "")
    if problems:
        raise validation_error(problems)
    return params


def _json_body(body: bytes) -> Any:
    try:
        data = json_strict_loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise LambdaError(
            "InvalidRequestContentException", f"Could not parse request body into json: {exc}", status=400
        ) from None
    if not all_text_storable(data):
        raise LambdaError(
            "InvalidRequestContentException",
            "The request holds a string that no text can store: a lone surrogate (\\ud800) or a NUL character.",
            status=400,
        )
    return data


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def all_text_storable(value: Any) -> bool:
    """Every string in ``value`` is Unicode a database can keep: no lone surrogate, no NUL (PostgreSQL refuses
    one in text)."""
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is None
    if isinstance(value, dict):
        return all(all_text_storable(key) and all_text_storable(item) for key, item in value.items())
    if isinstance(value, list):
        return all(all_text_storable(item) for item in value)
    return True


def _json_members(shape: Shape, body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    data = _json_body(body)
    if not isinstance(data, dict):
        raise LambdaError("InvalidRequestContentException", "The request body must be a JSON object.", status=400)
    located = {name for name, member in shape.members.items() if member.serialization.get("location")}
    # A member sent as null is a member not sent, as AWS takes it.
    return {name: value for name, value in data.items() if name not in located and value is not None}


def _scalar(member: Shape, text: str, wire_name: str) -> Any:
    if member.type_name in ("integer", "long"):
        if not re.fullmatch(r"-?\d{1,18}", text):
            raise validation_error(
                [f"Value '{text}' at '{_camel(wire_name)}' failed to satisfy constraint: Member must be a number"]
            )
        return int(text)
    if member.type_name == "boolean":
        if text not in ("true", "false"):
            raise validation_error(
                [f"Value '{text}' at '{_camel(wire_name)}' failed to satisfy constraint: Member must be true or false"]
            )
        return text == "true"
    return text


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def validation_error(problems: list[str]) -> LambdaError:
    count = len(problems)
    noun = "error" if count == 1 else "errors"
    return LambdaError("ValidationException", f"{count} validation {noun} detected: {'; '.join(problems)}", status=400)


def shape_problems(shape: Shape, value: Any, at: str) -> list[str]:
    """What is wrong with ``value`` as ``shape``, in AWS's words; [] when it fits."""
    where = at or "request"
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"Value at '{where}' failed to satisfy constraint: Member must be an object"]
        problems = [
            f"Value null at '{_join(at, name)}' failed to satisfy constraint: Member must not be null"
            for name in shape.required_members
            if value.get(name) is None
        ]
        for name, member_value in value.items():
            if name in shape.members and member_value is not None:
                problems += shape_problems(shape.members[name], member_value, _join(at, name))
        return problems
    if kind == "list":
        if not isinstance(value, list):
            return [f"Value at '{where}' failed to satisfy constraint: Member must be a list"]
        problems = _bounds(shape, len(value), where, "have length")
        for index, item in enumerate(value):
            problems += shape_problems(shape.member, item, f"{where}.{index + 1}.member")
        return problems
    if kind == "map":
        if not isinstance(value, dict):
            return [f"Value at '{where}' failed to satisfy constraint: Member must be a map"]
        problems = []
        for key, item in value.items():
            problems += shape_problems(shape.key, key, f"{where}.key")
            problems += shape_problems(shape.value, item, f"{where}.{key}.value")
        return problems
    return _scalar_problems(shape, value, where)


def _scalar_problems(shape: Shape, value: Any, where: str) -> list[str]:
    kind = shape.type_name
    shown = str(value)[:100]
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"Value '{shown}' at '{where}' failed to satisfy constraint: Member must be a number"]
        return _bounds(shape, value, where, "have value")
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return [f"Value '{shown}' at '{where}' failed to satisfy constraint: Member must be a number"]
        return []
    if kind == "boolean":
        if not isinstance(value, bool):
            return [f"Value '{shown}' at '{where}' failed to satisfy constraint: Member must be a boolean"]
        return []
    if kind == "blob":
        if isinstance(value, bytes):
            return []
        if not isinstance(value, str) or not _is_base64(value):
            return [f"Value at '{where}' failed to satisfy constraint: Member must be base64-encoded"]
        return []
    if kind == "timestamp":
        return []
    if not isinstance(value, str):
        return [f"Value '{shown}' at '{where}' failed to satisfy constraint: Member must be a string"]
    enum = shape.metadata.get("enum")
    if enum and value not in enum:
        allowed = ", ".join(enum)
        return [f"Value '{shown}' at '{where}' {_FAILED}: Member must satisfy enum value set: [{allowed}]"]
    problems = _bounds(shape, len(value), where, "have length")
    pattern = _pattern(shape.metadata.get("pattern"))
    if not problems and pattern is not None and not pattern.fullmatch(value):
        raw = shape.metadata["pattern"]
        problems.append(
            f"Value '{shown}' at '{where}' {_FAILED}: Member must satisfy regular expression pattern: {raw}"
        )
    return problems


_FAILED = "failed to satisfy constraint"


def _bounds(shape: Shape, amount: int, where: str, verb: str) -> list[str]:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and amount < low:
        return [f"Value at '{where}' failed to satisfy constraint: Member must {verb} greater than or equal to {low}"]
    if high is not None and amount > high:
        return [f"Value at '{where}' failed to satisfy constraint: Member must {verb} less than or equal to {high}"]
    return []


@functools.cache
def _pattern(text: str | None) -> re.Pattern[str] | None:
    if not text:
        return None
    try:
        return re.compile(text, re.DOTALL)
    except re.error:  # a Java-only construct: the services check the value anyway
        return None


def _join(at: str, name: str) -> str:
    return _camel(name) if not at else f"{at}.{_camel(name)}"


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return True


def json_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()

"""HTTP APIs: a definition of routes, stages, authorizers and CORS, checked whole when it is saved; and the
router it compiles to, which picks a request's route as API Gateway does (docs/http-endpoints.md)."""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from console.exceptions import ResourceConflict, ResourceNotFound, ServiceError
from functions_app.cors import cors_validate
from functions_app.models import TIMEOUT_MAX_S, Function, HttpApi

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY")
DEFAULT_ROUTE = "$default"
DEFAULT_STAGE = "$default"
PAYLOAD_FORMATS = ("1.0", "2.0")
INTEGRATION_TIMEOUT_MS = 30_000
API_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
STAGE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
PARAM_RE = re.compile(r"^\{([A-Za-z0-9_]+)(\+?)\}$")
IDENTITY_SOURCE_RE = re.compile(r"^\$(request\.header|request\.querystring|context|stageVariables)\.([A-Za-z0-9_.-]+)$")
AUTHORIZER_TTL_MAX_S = 3600
MAX_ROUTES = 300


# ---- the compiled definition --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Throttle:
    rate: float  # requests per second, refilled continuously
    burst: int  # requests at once


@dataclass(frozen=True)
class Authorizer:
    name: str
    type: str  # "REQUEST" (a Lambda authorizer) or "JWT"
    identity_sources: tuple[str, ...]
    function: str = ""
    ttl_s: int = 0
    issuer: str = ""
    audience: tuple[str, ...] = ()
    jwks_url: str = ""


@dataclass(frozen=True)
class Route:
    route_key: str
    method: str  # "ANY" for any method; "" for $default
    segments: tuple[str, ...]  # "{id}" for a parameter, "{proxy+}" for the greedy rest
    function: str
    qualifier: str = ""
    payload_format: str = "2.0"
    timeout_ms: int = INTEGRATION_TIMEOUT_MS
    authorizer: str = ""
    scopes: tuple[str, ...] = ()
    throttle: Throttle | None = None

    @property
    def resource(self) -> str:
        """The route's path as 1.0 events name it (``/items/{id}``), or ``$default``."""
        return "/" + "/".join(self.segments) if self.method else DEFAULT_ROUTE

    def specificity(self) -> tuple:
        """Sorts the most specific first: literal segments before parameters, a greedy rest last, then a named
        method before ANY; $default after everything."""
        if not self.method:
            return (2,)
        kinds = tuple(0 if not PARAM_RE.match(s) else (2 if s.endswith("+}") else 1) for s in self.segments)
        return (1 if kinds and kinds[-1] == 2 else 0, kinds, -len(self.segments), self.method == "ANY")


@dataclass(frozen=True)
class Stage:
    name: str
    variables: dict[str, str] = field(default_factory=dict)
    throttle: Throttle | None = None


@dataclass(frozen=True)
class Definition:
    routes: tuple[Route, ...]
    stages: dict[str, Stage]
    authorizers: dict[str, Authorizer]
    cors: dict[str, Any]
    not_found: dict[str, Any]

    def match(self, method: str, segments: list[str]) -> tuple[Route, dict[str, str]] | None:
        """The route a request takes and its path parameters, or None (then the API's not-found answer)."""
        for route in self.routes:  # already sorted, most specific first
            if route.method and route.method not in (method, "ANY"):
                continue
            parameters = _match_path(route.segments, segments) if route.method else {}
            if parameters is not None:
                return route, parameters
        return None


def _match_path(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    parameters: dict[str, str] = {}
    for position, part in enumerate(pattern):
        param = PARAM_RE.match(part)
        if param and param.group(2):  # greedy: the rest, one segment at least
            rest = segments[position:]
            if not rest or rest == [""]:
                return None
            parameters[param.group(1)] = "/".join(rest)
            return parameters
        if position >= len(segments):
            return None
        if param:
            if not segments[position]:
                return None
            parameters[param.group(1)] = segments[position]
        elif part != segments[position]:
            return None
    return parameters if len(segments) == len(pattern) else None


# ---- checking a definition ----------------------------------------------------------------------------------


def definition_validate(raw: Any) -> Definition:
    """The definition, compiled; a ServiceError naming the field (``routes[2].route_key``) when it is not one."""
    if not isinstance(raw, dict):
        raise _invalid("definition", "Send an object: routes, stages, authorizers, cors, not_found.")
    unknown = set(raw) - {"routes", "stages", "authorizers", "cors", "not_found"}
    if unknown:
        raise _invalid("definition", f"Unknown fields: {', '.join(sorted(unknown))}.")
    authorizers = _authorizers(_list_of(raw, "authorizers"))
    routes = _routes(_list_of(raw, "routes"), authorizers)
    stages = _stages(_list_of(raw, "stages") or [{"name": DEFAULT_STAGE}])
    return Definition(
        routes=tuple(sorted(routes, key=Route.specificity)),
        stages=stages,
        authorizers=authorizers,
        cors=cors_validate(raw.get("cors")),
        not_found=_not_found(raw.get("not_found")),
    )


def _list_of(raw: dict[str, Any], name: str) -> list[Any]:
    value = raw.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _invalid(name, f"{name} is a list of objects.")
    return value


def _invalid(field: str, message: str) -> ServiceError:
    return ServiceError(message, details={field: [message]})


def _fields(raw: dict[str, Any], where: str, allowed: set[str]) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise _invalid(where, f"Unknown fields: {', '.join(sorted(unknown))}.")


def _text(
    raw: dict[str, Any], name: str, where: str, pattern: re.Pattern[str] | None = None, default: Any = None
) -> str:
    value = raw.get(name, default)
    if not isinstance(value, str) or (pattern and not pattern.match(value)):
        raise _invalid(f"{where}.{name}", f"{name} must be {'a valid name' if pattern else 'text'}, not {value!r}.")
    return value


def _routes(raw_routes: list[dict[str, Any]], authorizers: dict[str, Authorizer]) -> list[Route]:
    if len(raw_routes) > MAX_ROUTES:
        raise _invalid("routes", f"An API has at most {MAX_ROUTES} routes.")
    routes: list[Route] = []
    shapes: dict[tuple[str, tuple[str, ...]], str] = {}
    allowed = {"route_key", "function", "qualifier", "payload_format", "timeout_ms", "authorizer"}
    for index, raw in enumerate(raw_routes):
        where = f"routes[{index}]"
        _fields(raw, where, allowed | {"authorization_scopes", "throttle"})
        route = _route(raw, where, authorizers)
        # Two routes conflict when they differ only in their parameters' names: both match the same requests.
        shape = (
            route.method,
            tuple("{+}" if s.endswith("+}") else "{}" if PARAM_RE.match(s) else s for s in route.segments),
        )
        if shape in shapes:
            raise ResourceConflict(
                f"{where}: the route {route.route_key!r} conflicts with {shapes[shape]!r} (they match the same "
                "requests).",
                details={f"{where}.route_key": [f"Conflicts with {shapes[shape]!r}."]},
            )
        shapes[shape] = route.route_key
        routes.append(route)
    return routes


def _route(raw: dict[str, Any], where: str, authorizers: dict[str, Authorizer]) -> Route:
    route_key = _text(raw, "route_key", where)
    method, segments = route_key_parse(route_key, f"{where}.route_key")
    payload_format = raw.get("payload_format", "2.0")
    if payload_format not in PAYLOAD_FORMATS:
        raise _invalid(f"{where}.payload_format", 'payload_format is "1.0" (REST API proxy) or "2.0" (HTTP API).')
    timeout_ms = raw.get("timeout_ms", INTEGRATION_TIMEOUT_MS)
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or not 50 <= timeout_ms <= TIMEOUT_MAX_S * 1000:
        raise _invalid(f"{where}.timeout_ms", f"timeout_ms is whole milliseconds from 50 to {TIMEOUT_MAX_S * 1000}.")
    authorizer = raw.get("authorizer") or ""
    if authorizer and authorizer not in authorizers:
        raise _invalid(f"{where}.authorizer", f"No authorizer is named {authorizer!r} in this API.")
    scopes = raw.get("authorization_scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(scope, str) and scope for scope in scopes):
        raise _invalid(f"{where}.authorization_scopes", "authorization_scopes is a list of scope names.")
    if scopes and (not authorizer or authorizers[authorizer].type != "JWT"):
        raise _invalid(f"{where}.authorization_scopes", "Scopes need a JWT authorizer on the route.")
    qualifier = raw.get("qualifier", "")
    if not isinstance(qualifier, str) or len(qualifier) > 128:
        raise _invalid(f"{where}.qualifier", "qualifier is $LATEST, a version number or an alias name.")
    return Route(
        route_key=route_key,
        method=method,
        segments=segments,
        function=_text(raw, "function", where, re.compile(r"^[A-Za-z0-9_-]{1,64}$")),
        qualifier=qualifier,
        payload_format=payload_format,
        timeout_ms=timeout_ms,
        authorizer=authorizer,
        scopes=tuple(scopes),
        throttle=_throttle(raw.get("throttle"), f"{where}.throttle"),
    )


# A route key's length at most (the per-route metrics key on it, metrics_app.models.TriggerRollup.route).
ROUTE_KEY_MAX_CHARS = 512


def route_key_parse(route_key: str, where: str = "route_key") -> tuple[str, tuple[str, ...]]:
    """``"GET /items/{id}"`` as (method, path segments); ``$default`` as ("", ())."""
    if route_key == DEFAULT_ROUTE:
        return "", ()
    if len(route_key) > ROUTE_KEY_MAX_CHARS:
        raise _invalid(where, f"A route key is at most {ROUTE_KEY_MAX_CHARS} characters, not {len(route_key)}.")
    method, _, path = route_key.partition(" ")
    if method not in METHODS or not path.startswith("/") or " " in path:
        raise _invalid(
            where, f"{route_key!r} is not a route: use METHOD /path (methods: {', '.join(METHODS)}) or $default."
        )
    segments = tuple(path[1:].split("/")) if path != "/" else ()
    names: set[str] = set()
    for position, segment in enumerate(segments):
        param = PARAM_RE.match(segment)
        if not segment or segment in (".", "..") or (("{" in segment or "}" in segment) and not param):
            raise _invalid(where, f"{route_key!r}: path segments are text or {{name}}, and not empty, '.' or '..'.")
        if param and param.group(2) and position != len(segments) - 1:
            raise _invalid(where, f"{route_key!r}: a greedy {{name+}} can only be the last segment.")
        if param and param.group(1) in names:
            raise _invalid(where, f"{route_key!r}: the parameter {param.group(1)!r} appears twice.")
        if param:
            names.add(param.group(1))
    return method, segments


def _throttle(raw: Any, where: str) -> Throttle | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"rate", "burst"}:
        raise _invalid(where, "throttle is {rate: requests per second, burst: requests at once}.")
    rate, burst = raw.get("rate"), raw.get("burst")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 100_000:
        raise _invalid(f"{where}.rate", "rate is requests per second, above 0 and at most 100000.")
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= 100_000:
        raise _invalid(f"{where}.burst", "burst is whole requests, from 1 to 100000.")
    return Throttle(float(rate), burst)


def _stages(raw_stages: list[dict[str, Any]]) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    for index, raw in enumerate(raw_stages):
        where = f"stages[{index}]"
        _fields(raw, where, {"name", "variables", "throttle"})
        name = _text(raw, "name", where)
        if name != DEFAULT_STAGE and not STAGE_NAME_RE.match(name):
            raise _invalid(f"{where}.name", "A stage is $default or 1 to 128 letters, digits, - or _.")
        if name in stages:
            raise _invalid(f"{where}.name", f"Two stages are named {name!r}.")
        variables = raw.get("variables", {})
        if not isinstance(variables, dict) or not all(
            isinstance(key, str)
            and re.match(r"^[A-Za-z0-9_]{1,64}$", key)
            and isinstance(value, str)
            and len(value) <= 2048
            for key, value in variables.items()
        ):
            raise _invalid(
                f"{where}.variables", "variables maps names (letters, digits, _) to text of at most 2048 characters."
            )
        stages[name] = Stage(name, dict(variables), _throttle(raw.get("throttle"), f"{where}.throttle"))
    return stages


def _authorizers(raw_authorizers: list[dict[str, Any]]) -> dict[str, Authorizer]:
    authorizers: dict[str, Authorizer] = {}
    for index, raw in enumerate(raw_authorizers):
        where = f"authorizers[{index}]"
        _fields(raw, where, {"name", "type", "function", "identity_sources", "ttl_s", "issuer", "audience", "jwks_url"})
        name = _text(raw, "name", where, re.compile(r"^[A-Za-z0-9_-]{1,128}$"))
        if name in authorizers:
            raise _invalid(f"{where}.name", f"Two authorizers are named {name!r}.")
        kind = raw.get("type")
        sources = raw.get("identity_sources", ["$request.header.Authorization"])
        if (
            not isinstance(sources, list)
            or not sources
            or not all(isinstance(s, str) and IDENTITY_SOURCE_RE.match(s) for s in sources)
        ):
            raise _invalid(
                f"{where}.identity_sources",
                "identity_sources lists $request.header.<name>, $request.querystring.<name>, $context.<name> or "
                "$stageVariables.<name>.",
            )
        if kind == "REQUEST":
            ttl = raw.get("ttl_s", 0)
            if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= AUTHORIZER_TTL_MAX_S:
                raise _invalid(f"{where}.ttl_s", f"ttl_s is whole seconds from 0 to {AUTHORIZER_TTL_MAX_S}.")
            function = _text(raw, "function", where, re.compile(r"^[A-Za-z0-9_-]{1,64}$"))
            authorizers[name] = Authorizer(name, kind, tuple(sources), function=function, ttl_s=ttl)
        elif kind == "JWT":
            if len(sources) != 1 or not sources[0].startswith("$request.header."):
                raise _invalid(
                    f"{where}.identity_sources",
                    "A JWT authorizer reads one header, e.g. $request.header.Authorization.",
                )
            issuer = _text(raw, "issuer", where)
            audience = raw.get("audience", [])
            if not isinstance(audience, list) or not audience or not all(isinstance(a, str) and a for a in audience):
                raise _invalid(f"{where}.audience", "audience lists the accepted audiences (one at least).")
            jwks_url = _text(raw, "jwks_url", where)
            if urlsplit(jwks_url).scheme not in ("https", "http") or not urlsplit(jwks_url).hostname:
                raise _invalid(
                    f"{where}.jwks_url", "jwks_url is the https:// address of the issuer's JSON Web Key Set."
                )
            authorizers[name] = Authorizer(
                name, kind, tuple(sources), issuer=issuer, audience=tuple(audience), jwks_url=jwks_url
            )
        else:
            raise _invalid(f"{where}.type", "type is REQUEST (a Lambda authorizer) or JWT.")
    return authorizers


def _not_found(raw: Any) -> dict[str, Any]:
    """The answer to a request no route takes: API Gateway's by default, or the API's own."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or set(raw) - {"status", "body", "content_type"}:
        raise _invalid("not_found", "not_found is {status, body, content_type}.")
    status = raw.get("status", 404)
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 499:
        raise _invalid("not_found.status", "not_found.status is a 4xx status.")
    body, content_type = raw.get("body", ""), raw.get("content_type", "application/json")
    if not isinstance(body, str) or len(body) > 65536 or not isinstance(content_type, str) or "\n" in content_type:
        raise _invalid("not_found.body", "not_found.body is text (at most 64 KB) and content_type a media type.")
    return {"status": status, "body": body, "content_type": content_type}


# ---- the APIs -----------------------------------------------------------------------------------------------


def http_api_list(*, owner: User) -> list[HttpApi]:
    return list(HttpApi.objects.filter(owner=owner))


def http_api_get(*, owner: User, name: str) -> HttpApi:
    api = HttpApi.objects.filter(owner=owner, name=name).first()
    if api is None:
        raise ResourceNotFound(f"HTTP API not found: {name}")
    return api


def http_api_create(*, owner: User, name: str, description: str = "", definition: Any = None) -> HttpApi:
    if not isinstance(name, str) or not API_NAME_RE.match(name):
        raise _invalid("name", "Use 1 to 128 letters, digits, '.', '-' or '_'.")
    definition = definition if definition is not None else {}
    _functions_check(owner, definition_validate(definition))
    try:
        with transaction.atomic():
            return HttpApi.objects.create(
                owner=owner, name=name, api_id=_new_api_id(), description=description, definition=definition
            )
    except IntegrityError:
        raise ResourceConflict(f"You already have an HTTP API named {name}.") from None


def http_api_update(*, api: HttpApi, description: str | None = None, definition: Any = None) -> HttpApi:
    """Replace the definition (whole) and/or the description."""
    if definition is not None:
        _functions_check(api.owner, definition_validate(definition))
        api.definition = definition
    if description is not None:
        api.description = description
    api.save()
    return api


def _functions_check(owner: User, definition: Definition) -> None:
    """Every function the definition names is one of the owner's (a function deleted later answers 500)."""
    named = {route.function for route in definition.routes}
    named |= {authorizer.function for authorizer in definition.authorizers.values() if authorizer.function}
    missing = named - set(Function.objects.filter(owner=owner, name__in=named).values_list("name", flat=True))
    if missing:
        raise ResourceNotFound(
            f"Function not found: {', '.join(sorted(missing))}. Routes and authorizers run functions of yours.",
            details={"definition": [f"No function named {name!r}." for name in sorted(missing)]},
        )


def http_api_routes_to(*, function: Function) -> list[tuple[HttpApi, dict[str, Any]]]:
    """The HTTP API routes (of the function's owner) that run this function, for its Triggers tab."""
    return [
        (api, route)
        for api in HttpApi.objects.filter(owner_id=function.owner_id)
        for route in api.definition.get("routes", [])
        if route.get("function") == function.name
    ]


def http_api_delete(*, api: HttpApi) -> None:
    api.delete()


def http_api_stage_address(*, api: HttpApi, stage: str, scheme: str, host: str) -> str:
    """A stage's invoke URL: ``{api_id}.{FUNCTION_URL_DOMAIN}`` where a wildcard domain is set, else the path
    under this server's address; a stage other than $default adds its name."""
    base = (
        f"{scheme}://{api.api_id}.{settings.FUNCTION_URL_DOMAIN}/"
        if settings.FUNCTION_URL_DOMAIN
        else f"{scheme}://{host}/http/{api.api_id}/"
    )
    return base if stage == DEFAULT_STAGE else f"{base}{stage}/"


def http_api_stages(*, api: HttpApi, scheme: str, host: str) -> list[tuple[str, str]]:
    """Each stage's name and invoke URL."""
    names = [stage.get("name", "") for stage in api.definition.get("stages", [])] or [DEFAULT_STAGE]
    return [(name, http_api_stage_address(api=api, stage=name, scheme=scheme, host=host)) for name in names]


def route_curl(stage_url: str, route_key: str) -> str:
    """A curl line that takes the route (its parameters filled with examples)."""
    method, _, path = route_key.partition(" ")
    if not path:
        return f"curl -i {stage_url}"
    example = "/".join("1" if part.startswith("{") else part for part in path.strip("/").split("/"))
    verb = "" if method in ("GET", "ANY") else f" -X {method}"
    return f"curl -i{verb} {stage_url}{example}"


def _new_api_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(10))

"""Authorizers of HTTP APIs, as API Gateway's: a Lambda (REQUEST) authorizer is a function that gets the
request and answers the simple response ``{"isAuthorized": bool, "context": {…}}``, cached per identity for its
TTL; a JWT authorizer checks a bearer token against its issuer's JSON Web Key Set (an OpenID Connect provider)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
from django.conf import settings
from django.contrib.auth.models import User
from redis.exceptions import RedisError

from console.exceptions import ServiceError
from console.redis import redis_client
from functions_app.http_apis import Authorizer, Route
from functions_app.http_events import HttpRequest
from functions_app.invoke import function_invoke
from functions_app.models import Function, InvocationType
from functions_app.outbound import PrivateAddress, host_refuse_private

logger = logging.getLogger(__name__)

CACHE_KEY = "ephemera:authz:{api_id}:{name}:{identity}"
JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"]
JWKS_TIMEOUT_S = 5
JWKS_LIFESPAN_S = 300
# The web's clients of key sets, one per URL: each keeps the keys it fetched for JWKS_LIFESPAN_S.
_jwks_clients: dict[str, jwt.PyJWKClient] = {}


@dataclass(frozen=True)
class Verdict:
    """0 when the request may go on (with what the authorizer adds to the event), else the status to answer."""

    status: int
    context: dict[str, Any] = field(default_factory=dict)
    scopes: list[str] | None = None
    message: str = ""


def identity_values(
    authorizer: Authorizer, request: HttpRequest, stage_variables: dict[str, str], route_key: str
) -> list[str] | None:
    """The values of the authorizer's identity sources, or None when one is missing (API Gateway then answers 401
    without calling the authorizer)."""
    query = dict(parse_qsl(request.raw_query, keep_blank_values=True))
    values = []
    for source in authorizer.identity_sources:
        kind, _, name = source[1:].rpartition(".")
        if kind == "request.header":
            value = request.header(name.lower())
        elif kind == "request.querystring":
            value = query.get(name)
        elif kind == "stageVariables":
            value = stage_variables.get(name)
        else:  # $context.<name>: what this platform knows of the request
            value = {"routeKey": route_key, "httpMethod": request.method, "sourceIp": request.source_ip}.get(name)
        if not value:
            return None
        values.append(value)
    return values


def lambda_authorize(
    *, owner: User, api_id: str, authorizer: Authorizer, identity: list[str], event: dict[str, Any]
) -> Verdict:
    """Ask the authorizer function (the API owner's), or its cached answer for this identity."""
    key = CACHE_KEY.format(api_id=api_id, name=authorizer.name, identity=_digest(identity))
    cached = _cached(key) if authorizer.ttl_s else None
    if cached is not None:
        return cached
    function = Function.objects.filter(owner=owner, name=authorizer.function).first()
    if function is None:
        logger.warning("API %s: the authorizer function %r does not exist", api_id, authorizer.function)
        return Verdict(500, message="Internal Server Error")
    answer = function_invoke(
        owner=owner,
        function=function,
        qualifier="",
        raw_payload=json.dumps({**event, "type": "REQUEST", "identitySource": identity}).encode(),
        invocation_type=InvocationType.SYNC,
    )
    outcome = answer.outcome
    if outcome is None or not outcome.finished or outcome.function_error or outcome.platform_error:
        return Verdict(500, message="Internal Server Error")
    verdict = _simple_response(outcome.result)
    if authorizer.ttl_s and verdict.status in (0, 403):
        _remember(key, verdict, authorizer.ttl_s)
    return verdict


def _simple_response(result: str) -> Verdict:
    try:
        value = json.loads(result)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("isAuthorized"), bool):
        logger.warning("An authorizer answered %r, not {isAuthorized: bool, context: {}}", result[:200])
        return Verdict(500, message="Internal Server Error")
    context = value.get("context") or {}
    if not isinstance(context, dict):
        return Verdict(500, message="Internal Server Error")
    return Verdict(0, context) if value["isAuthorized"] else Verdict(403, message="Forbidden")


def _digest(identity: list[str]) -> str:
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


def _cached(key: str) -> Verdict | None:
    try:
        raw = redis_client().get(key)
    except RedisError:
        return None  # the authorizer is asked instead
    if raw is None:
        return None
    stored = json.loads(raw)
    return Verdict(stored["status"], stored["context"], message=stored["message"])


def _remember(key: str, verdict: Verdict, ttl_s: int) -> None:
    try:
        value = {"status": verdict.status, "context": verdict.context, "message": verdict.message}
        redis_client().set(key, json.dumps(value), ex=ttl_s)
    except RedisError as exc:
        logger.warning("An authorizer's answer was not cached (%r)", exc)


def jwt_authorize(*, authorizer: Authorizer, route: Route, token_header: str) -> Verdict:
    """Check the bearer token: signed by a key of the issuer's set, from the issuer, for one of the audiences,
    within its validity; and holding one of the route's scopes, if it names any."""
    token = token_header.removeprefix("Bearer ").removeprefix("bearer ").strip()
    if not token:
        return Verdict(401, message="Unauthorized")
    try:
        key = _jwks_client(authorizer.jwks_url).get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key=key.key,
            algorithms=JWT_ALGORITHMS,
            audience=list(authorizer.audience),
            issuer=authorizer.issuer,
            options={"require": ["exp", "iss"]},
        )
    except (jwt.PyJWTError, ServiceError) as exc:
        logger.info("JWT refused by %s: %s", authorizer.name, exc)
        return Verdict(401, message="Unauthorized")
    scopes = _scopes(claims)
    if route.scopes and not set(route.scopes) & set(scopes):
        return Verdict(403, message="Forbidden")
    return Verdict(0, {"claims": {name: _claim_text(value) for name, value in claims.items()}}, scopes or None)


def _scopes(claims: dict[str, Any]) -> list[str]:
    scope: Any = claims.get("scope", claims.get("scp", ""))
    return scope.split() if isinstance(scope, str) else [str(item) for item in scope or []]


def _claim_text(value: Any) -> str:
    """Claims reach the function as text, as API Gateway passes them (a list as ``[a b]``)."""
    if isinstance(value, list):
        return "[" + " ".join(str(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _jwks_client(url: str) -> jwt.PyJWKClient:
    client = _jwks_clients.get(url)
    if client is None:
        _refuse_private(url)
        client = jwt.PyJWKClient(url, cache_keys=True, lifespan=JWKS_LIFESPAN_S, timeout=JWKS_TIMEOUT_S)
        _jwks_clients[url] = client
    return client


def _refuse_private(url: str) -> None:
    """The web fetches a key set an API's owner named: never from the platform's own network (loopback,
    private, link-local addresses: the metadata service, Redis, the database) unless the operator allows it."""
    if settings.HTTP_JWKS_ALLOW_PRIVATE:
        return
    try:
        host_refuse_private(urlsplit(url).hostname or "")
    except PrivateAddress as exc:
        raise ServiceError(f"The key set's host {exc}; see HTTP_JWKS_ALLOW_PRIVATE.") from None

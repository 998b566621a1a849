"""CORS of HTTP triggers, answered at the edge as Lambda's function URLs do: a preflight never reaches the
function, and an allowed origin's response carries the configured headers (replacing any the function set)."""

from __future__ import annotations

import re
from typing import Any

from console.exceptions import ServiceError
from functions_app.http_events import HttpAnswer, HttpRequest

METHODS = ("GET", "PUT", "HEAD", "POST", "PATCH", "DELETE", "*")
MAX_AGE_MAX_S = 86400
LIST_FIELDS = {"allow_origins": 100, "allow_methods": 6, "allow_headers": 100, "expose_headers": 100}
# scheme://host[:port], or "*": what a browser sends in Origin (no path, no trailing slash).
ORIGIN = re.compile(r"^\*$|^https?://(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(:(?P<port>[0-9]{1,5}))?$")
HEADER_NAME = re.compile(r"^(\*|[!#$%&'*+.^_`|~0-9A-Za-z-]{1,1024})$")
CORS_HEADERS = ("access-control-allow-origin", "access-control-allow-credentials", "access-control-expose-headers")


def cors_validate(config: Any) -> dict[str, Any]:
    """The configuration, checked and normalised (methods upper-case, header names lower-case); {} means none."""
    if config is None or config == {}:
        return {}
    if not isinstance(config, dict):
        raise _invalid("cors", "Send an object: allow_origins, allow_methods, allow_headers, expose_headers, ...")
    unknown = set(config) - {*LIST_FIELDS, "max_age", "allow_credentials"}
    if unknown:
        raise _invalid("cors", f"Unknown CORS fields: {', '.join(sorted(unknown))}.")
    clean: dict[str, Any] = {name: _list(config, name) for name in LIST_FIELDS}
    for origin in clean["allow_origins"]:
        if not _is_origin(origin):
            raise _invalid(
                "cors.allow_origins",
                f"{origin!r} is not an origin: use scheme://host[:port] (no path), https://*.example.com or *.",
            )
    clean["allow_methods"] = list(dict.fromkeys(method.upper() for method in clean["allow_methods"]))
    for method in clean["allow_methods"]:
        if method not in METHODS:
            raise _invalid("cors.allow_methods", f"{method!r} is not one of {', '.join(METHODS)}.")
    for name in ("allow_headers", "expose_headers"):
        clean[name] = list(dict.fromkeys(header.lower() for header in clean[name]))
        for header in clean[name]:
            if not HEADER_NAME.match(header):
                raise _invalid(f"cors.{name}", f"{header!r} is not a header name.")
    max_age = config.get("max_age", 0)
    if isinstance(max_age, bool) or not isinstance(max_age, int) or not 0 <= max_age <= MAX_AGE_MAX_S:
        raise _invalid("cors.max_age", f"max_age is whole seconds from 0 to {MAX_AGE_MAX_S}.")
    credentials = config.get("allow_credentials", False)
    if not isinstance(credentials, bool):
        raise _invalid("cors.allow_credentials", "allow_credentials is true or false.")
    if credentials and "*" in clean["allow_origins"]:
        raise _invalid("cors.allow_origins", "Browsers refuse credentials with the origin *: name the origins.")
    return {**clean, "max_age": max_age, "allow_credentials": credentials}


def _is_origin(origin: str) -> bool:
    match = ORIGIN.match(origin)
    if not match:
        return False
    if match["port"] and not 0 < int(match["port"]) <= 65535:
        return False
    # A wildcard covers the subdomains of one site, never of a whole top-level domain ("https://*.com").
    return "://*." not in origin or origin.split("://*.", 1)[1].split(":")[0].count(".") >= 1


def _list(config: dict[str, Any], name: str) -> list[str]:
    values = config.get(name, [])
    limit = LIST_FIELDS[name]
    if not isinstance(values, list) or not all(isinstance(value, str) and value for value in values):
        raise _invalid(f"cors.{name}", f"{name} is a list of strings.")
    if len(values) > limit:
        raise _invalid(f"cors.{name}", f"{name} holds at most {limit} entries.")
    return list(dict.fromkeys(values))


def _invalid(field: str, message: str) -> ServiceError:
    return ServiceError(message, details={field: [message]})


def cors_preflight(config: dict[str, Any], request: HttpRequest) -> HttpAnswer | None:
    """The answer to a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method), or None when the
    request is not one or there is no configuration (then the function gets it)."""
    origin = request.header("origin")
    if not config or request.method != "OPTIONS" or not origin or not request.header("access-control-request-method"):
        return None
    answer = HttpAnswer(204, [("Vary", "Origin")])
    allowed = _allowed_origin(config, origin)
    if allowed is None:
        return answer
    answer.headers.append(("Access-Control-Allow-Origin", allowed))
    if config["allow_methods"]:
        answer.headers.append(("Access-Control-Allow-Methods", ", ".join(config["allow_methods"])))
    if config["allow_headers"]:
        answer.headers.append(("Access-Control-Allow-Headers", ", ".join(config["allow_headers"])))
    if config["max_age"]:
        answer.headers.append(("Access-Control-Max-Age", str(config["max_age"])))
    if config["allow_credentials"]:
        answer.headers.append(("Access-Control-Allow-Credentials", "true"))
    return answer


def cors_decorate(config: dict[str, Any], request: HttpRequest, answer: HttpAnswer) -> HttpAnswer:
    """The function's response with the configuration's CORS headers for the request's origin."""
    origin = request.header("origin")
    if not config:
        return answer
    answer.headers = [(name, value) for name, value in answer.headers if name.lower() not in CORS_HEADERS]
    answer.headers.append(("Vary", "Origin"))
    allowed = _allowed_origin(config, origin) if origin else None
    if allowed is None:
        return answer
    answer.headers.append(("Access-Control-Allow-Origin", allowed))
    if config["expose_headers"]:
        answer.headers.append(("Access-Control-Expose-Headers", ", ".join(config["expose_headers"])))
    if config["allow_credentials"]:
        answer.headers.append(("Access-Control-Allow-Credentials", "true"))
    return answer


def _allowed_origin(config: dict[str, Any], origin: str) -> str | None:
    """What Access-Control-Allow-Origin says to this origin: ``*`` when any is allowed (and no credentials), the
    origin itself when listed (a ``*.`` entry matches its subdomains), else None."""
    for allowed in config["allow_origins"]:
        if allowed == "*":
            return "*" if not config["allow_credentials"] else origin
        if allowed.lower() == origin.lower():
            return origin
        if "://*." in allowed:
            scheme, suffix = allowed.split("://*.", 1)
            if origin.lower().startswith(f"{scheme}://") and origin.lower().endswith(f".{suffix.lower()}"):
                return origin
    return None

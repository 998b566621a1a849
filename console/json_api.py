"""JSON in and out of the REST API, shared by every app's API: fields that take only their own JSON type, a parser
that refuses what is not text, serializers that show stored JSON text as the JSON value it holds, pagination,
and the error schema."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from console.exceptions import ServiceError
from console.pagination import Pagination

# ---- JSON in ------------------------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is too large for a JSON number")
    return value


def json_strict_loads(text: str | bytes) -> Any:
    """JSON as RFC 8259 has it: Python's parser also takes NaN and Infinity, and reads 1e400 as infinity, none of
    which any JSON client can read back (a response holding one cannot even be rendered)."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite)


# DRF's fields coerce: "yes" becomes true, "256" becomes 256, 123 becomes "123", " x " becomes "x". The API's
# fields take only their own JSON type, as sent, so that a client's bug is an error and not a guess.


def _json_kind(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "null" if value is None else "boolean"
    kinds = [(int, "integer"), (float, "number"), (str, "string"), (list, "array"), (dict, "object")]
    return next((name for cls, name in kinds if isinstance(value, cls)), type(value).__name__)


class _JsonTyped:
    kinds: tuple[str, ...] = ()

    def to_internal_value(self, data: Any) -> Any:
        kind = _json_kind(data)
        if kind not in self.kinds:
            article = "an" if kind[0] in "aeiou" else "a"
            raise serializers.ValidationError(f"Must be a JSON {self.kinds[0]}, not {article} {kind}.")
        return super().to_internal_value(data)  # type: ignore[misc]


class Boolean(_JsonTyped, serializers.BooleanField):
    kinds = ("boolean",)


class Integer(_JsonTyped, serializers.IntegerField):
    kinds = ("integer",)


class Number(_JsonTyped, serializers.FloatField):
    kinds = ("number", "integer")


class Text(_JsonTyped, serializers.CharField):
    kinds = ("string",)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{"trim_whitespace": False, **kwargs})


class Uuid(_JsonTyped, serializers.UUIDField):
    kinds = ("string",)


class StrictSerializer(serializers.Serializer):
    """Unknown fields are an error, not silently dropped: a typo must not look like success."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, dict):
            unknown = set(data) - set(self.fields)
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in sorted(unknown)})
        return super().to_internal_value(data)


# "\ud800" is valid JSON but decodes to a lone surrogate, which no UTF-8 text (a zip entry, a response) can carry.
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")


def _is_unicode(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


class StrictJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = (parser_context or {}).get("encoding", "utf-8")
        try:
            data = json_strict_loads(stream.read().decode(encoding)) if stream is not None else None
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply to be read.") from None
        except ValueError as exc:  # UnicodeDecodeError is one
            raise ParseError(f"JSON parse error - {exc}") from None
        if not _is_unicode(data):
            raise ParseError("JSON parse error - the body holds a lone surrogate (e.g. \\ud800), which is not text.")
        return data


def json_body(serializer_class: type[serializers.Serializer], request: Request, **kwargs: Any) -> dict[str, Any]:
    """The request's JSON object, validated by ``serializer_class`` (a StrictSerializer: unknown fields refused)."""
    if not isinstance(request.data, dict):
        raise ServiceError("The request body must be a JSON object.", type="InvalidRequestContent")
    serializer = serializer_class(data=request.data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


class JsonApi(APIView):
    """Request bodies are JSON; any other content type is 415 naming the one to send (see console.exceptions)."""

    parser_classes = [StrictJSONParser]


# ---- stored JSON text out -----------------------------------------------------------------------------------

_UNPARSED: Any = object()


def _json_value(text: str) -> Any:
    """The value the JSON ``text`` holds (None for no text), or ``_UNPARSED``."""
    if not text:
        return None
    try:
        value = json_strict_loads(text)
    except ValueError:
        return _UNPARSED
    return _UNPARSED if _SURROGATE_ESCAPE_RE.search(text) and not _is_unicode(value) else value


class JsonTextSerializer(serializers.Serializer):
    # Renders ``json_text_fields`` (stored as JSON text) as the JSON values they hold, not as strings of JSON.
    # Text that is not valid JSON (a record cut short, say), or whose value is not text UTF-8 can carry (a lone
    # surrogate), is never a 500: the field is then null and the text goes under ``unparsed``, by field name.
    # Empty text (no result yet) is null. Subclasses declare ``unparsed`` last, with ``unparsed_field()``, so
    # that it comes last in the output.

    json_text_fields: tuple[str, ...] = ()

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data = super().to_representation(instance)
        for name in self.json_text_fields:
            value = _json_value(data[name])
            if value is _UNPARSED:
                data["unparsed"][name], value = data[name], None
            data[name] = value
        return data

    def get_unparsed(self, instance: Any) -> dict[str, str]:
        return {}  # filled by to_representation, which parses each text once


def unparsed_field() -> serializers.SerializerMethodField:
    return serializers.SerializerMethodField(
        help_text="The fields whose stored text is not valid JSON (e.g. a record cut short) or holds a lone "
        "surrogate (\\ud800), with that text; those fields are then null. Normally empty."
    )


# ---- pages and errors ------------------------------------------------------------------------------------

ErrorSerializer = inline_serializer(
    "Error",
    fields={
        "type": serializers.CharField(help_text="Stable error type, e.g. InvalidParameterValue."),
        "message": serializers.CharField(help_text="A human sentence."),
        "details": serializers.JSONField(help_text="Per-field problems or extra facts."),
    },
)


def paginated_of(serializer_class: type[serializers.Serializer]) -> serializers.Serializer:
    """The schema of a page of results (LimitOffsetPagination's envelope)."""
    name = serializer_class.__name__.removesuffix("Serializer").removesuffix("Output")
    return inline_serializer(
        f"Paginated{name}List",
        fields={
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer_class(many=True),
        },
    )


ERRORS = {code: ErrorSerializer for code in (400, 401, 403, 404, 409, 412, 413, 415)}


def paginated(request: Request, view: APIView, items: QuerySet, output: type[serializers.Serializer]) -> Response:
    paginator = Pagination()
    page = paginator.paginate_queryset(items, request, view=view)
    return paginator.get_paginated_response(output(page, many=True).data)

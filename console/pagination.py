from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request

from console.exceptions import ServiceError


class Pagination(LimitOffsetPagination):
    """``?limit=`` (1 to 500, default 50) and ``?offset=``; a value that is not a whole number is refused, not
    silently replaced by the default."""

    default_limit = 50
    max_limit = 500

    def get_limit(self, request: Request) -> int | None:
        _whole_number(request, self.limit_query_param, minimum=1, maximum=self.max_limit)
        return super().get_limit(request)

    def get_offset(self, request: Request) -> int:
        _whole_number(request, self.offset_query_param, minimum=0)
        return super().get_offset(request)


def _whole_number(request: Request, name: str, *, minimum: int, maximum: int | None = None) -> None:
    value = request.query_params.get(name)
    if value is None:
        return
    number = int(value) if value.isascii() and value.isdigit() else None
    if number is None or number < minimum or (maximum is not None and number > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        message = f"Must be a whole number {bounds}."
        raise ServiceError(f"{name}: {message}", details={name: [message]})

"""AWS Signature Version 4, checked as AWS checks it (docs/lambda-api.md): the Authorization header or a presigned
query, the credential's scope (date, region, service), the clock (±15 minutes; a presigned URL until it expires)
and the signature over the canonical request, whose payload hash is the body's own (Lambda's clients send no
``X-Amz-Content-SHA256``; one that is sent must match the body). The secret comes from ``secret_for``."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar
from urllib.parse import quote, quote_from_bytes, unquote, unquote_to_bytes

from functions_app.lambda_api.errors import LambdaError

ALGORITHM = "AWS4-HMAC-SHA256"
CLOCK_SKEW = timedelta(minutes=15)
PRESIGNED_MAX_EXPIRES_S = 7 * 24 * 3600
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access "
    "Key and signing method. Consult the service documentation for details."
)
Owner = TypeVar("Owner")


@dataclass(frozen=True)
class SignedRequest:
    method: str
    raw_path: str  # as sent: percent-encoded
    raw_query: str  # as sent
    headers: dict[str, str]  # lower-case names
    body_sha256: str
    secure: bool


@dataclass(frozen=True)
class _Signature:
    access_key_id: str
    date: str  # yyyymmdd of the scope
    region: str
    service: str
    signed_headers: list[str]
    signature: str
    amz_date: str
    expires_s: int | None  # presigned only


@dataclass(frozen=True)
class Verified(Generic[Owner]):
    owner: Owner
    access_key_id: str


def signature_verify(
    request: SignedRequest,
    *,
    secret_for: Callable[[str], tuple[Owner, str] | None],
    region: str,
    now: datetime,
    check_signature: bool = True,
    service: str = "lambda",
) -> Verified[Owner]:
    """The caller the request is signed by, or the LambdaError AWS answers. With ``check_signature`` off (a
    development switch), the key still has to exist: it says whose account the call is in."""
    signature = _signature_of(request)
    if signature.service != service:
        raise _incomplete(f"Credential should be scoped to correct service: '{service}'.")
    if signature.region != region:
        raise _invalid_signature(f"Credential should be scoped to a valid region, not '{signature.region}'.")
    if "host" not in signature.signed_headers:
        raise _incomplete("Authorization must sign the 'host' header.")
    found = secret_for(signature.access_key_id)
    if found is None:
        raise LambdaError(
            "UnrecognizedClientException", "The security token included in the request is invalid.", status=403
        )
    owner, secret = found
    if "x-amz-security-token" in request.headers or "X-Amz-Security-Token" in dict(query_pairs(request.raw_query)):
        # Ephemera issues no temporary credentials: a session token is someone else's.
        raise LambdaError(
            "UnrecognizedClientException", "The security token included in the request is invalid.", status=403
        )
    _clock_check(signature, now)
    if check_signature and not any(
        hmac.compare_digest(_sign(request, signature, secret, payload), signature.signature)
        for payload in _payload_hashes(request, signature)
    ):
        raise _invalid_signature(_MISMATCH)
    return Verified(owner, signature.access_key_id)


def _signature_of(request: SignedRequest) -> _Signature:
    query = dict(query_pairs(request.raw_query))
    if "X-Amz-Signature" in query or "X-Amz-Credential" in query:
        return _presigned_signature(query)
    authorization = request.headers.get("authorization", "")
    if not authorization:
        raise LambdaError("MissingAuthenticationTokenException", "Missing Authentication Token", status=403)
    found = _AUTHORIZATION.match(authorization.strip())
    if not found:
        raise _incomplete(
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters of the "
            f"{ALGORITHM} algorithm."
        )
    amz_date = request.headers.get("x-amz-date", "")
    return _Signature(
        *_credential_parts(found["credential"]),
        signed_headers=found["signed"].split(";"),
        signature=found["signature"],
        amz_date=amz_date,
        expires_s=None,
    )


def _presigned_signature(query: dict[str, str]) -> _Signature:
    missing = [
        name
        for name in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature")
        if not query.get(name)
    ]
    if missing:
        raise _incomplete(f"The presigned URL lacks {', '.join(missing)}.")
    if query["X-Amz-Algorithm"] != ALGORITHM:
        raise _incomplete(f"X-Amz-Algorithm must be {ALGORITHM}.")
    expires = query.get("X-Amz-Expires", "")
    if not expires.isascii() or not expires.isdigit() or not 1 <= int(expires) <= PRESIGNED_MAX_EXPIRES_S:
        raise _incomplete(f"X-Amz-Expires must be a number of seconds from 1 to {PRESIGNED_MAX_EXPIRES_S}.")
    if not re.fullmatch(r"[0-9a-f]{64}", query["X-Amz-Signature"]):
        raise _incomplete("X-Amz-Signature must be 64 hexadecimal digits.")
    return _Signature(
        *_credential_parts(query["X-Amz-Credential"]),
        signed_headers=query["X-Amz-SignedHeaders"].split(";"),
        signature=query["X-Amz-Signature"],
        amz_date=query["X-Amz-Date"],
        expires_s=int(expires),
    )


def _credential_parts(credential: str) -> tuple[str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not parts[0]:
        raise _incomplete(
            f"Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got "
            f"'{credential[:200]}'."
        )
    return parts[0], parts[1], parts[2], parts[3]


def _clock_check(signature: _Signature, now: datetime) -> None:
    try:
        signed_at = datetime.strptime(signature.amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise _incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header in the basic "
            "ISO 8601 form (20261126T163045Z)."
        ) from None
    if signature.date != signature.amz_date[:8]:
        raise _invalid_signature(
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{signature.date}' != '{signature.amz_date[:8]}', from '{signature.amz_date}'."
        )
    stamp = "%Y%m%dT%H%M%SZ"
    if signature.expires_s is not None:
        if now > signed_at + timedelta(seconds=signature.expires_s):
            raise _invalid_signature(
                f"Signature expired: {signature.amz_date} + {signature.expires_s} s is now earlier than "
                f"{now.strftime(stamp)}."
            )
        if signed_at > now + CLOCK_SKEW:
            raise _invalid_signature(f"Signature not yet current: {signature.amz_date} is still later than now.")
        return
    if signed_at < now - CLOCK_SKEW:
        raise _invalid_signature(
            f"Signature expired: {signature.amz_date} is now earlier than {(now - CLOCK_SKEW).strftime(stamp)} "
            f"({now.strftime(stamp)} - 15 min.)"
        )
    if signed_at > now + CLOCK_SKEW:
        raise _invalid_signature(
            f"Signature not yet current: {signature.amz_date} is still later than "
            f"{(now + CLOCK_SKEW).strftime(stamp)} ({now.strftime(stamp)} + 15 min.)"
        )


def _payload_hashes(request: SignedRequest, signature: _Signature) -> list[str]:
    """The payload hashes the signature may cover: the body's own, the one a client declared (which must be the
    body's), or UNSIGNED-PAYLOAD, which AWS clients use only over HTTPS."""
    declared = request.headers.get("x-amz-content-sha256")
    if declared is None:
        return [request.body_sha256] + ([UNSIGNED_PAYLOAD] if request.secure and signature.expires_s else [])
    if declared == UNSIGNED_PAYLOAD:
        if not request.secure:
            raise _invalid_signature("UNSIGNED-PAYLOAD is accepted over HTTPS only; sign the payload.")
        return [UNSIGNED_PAYLOAD]
    if declared != request.body_sha256:
        raise _invalid_signature("The provided 'x-amz-content-sha256' header does not match what was computed.")
    return [declared]


def _sign(request: SignedRequest, signature: _Signature, secret: str, payload_hash: str) -> str:
    canonical = "\n".join(
        [
            request.method,
            quote(request.raw_path or "/", safe="/~"),
            _canonical_query(request.raw_query, presigned=signature.expires_s is not None),
            "".join(f"{name}:{_header_value(request, name)}\n" for name in signature.signed_headers),
            ";".join(signature.signed_headers),
            payload_hash,
        ]
    )
    scope = f"{signature.date}/{signature.region}/{signature.service}/aws4_request"
    to_sign = f"{ALGORITHM}\n{signature.amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = f"AWS4{secret}".encode()
    for part in (signature.date, signature.region, signature.service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def _canonical_query(raw_query: str, *, presigned: bool) -> str:
    """The query's pairs, each name and value encoded as SigV4 wants (RFC 3986), sorted. Worked on bytes, from the
    query as sent: a value that is not UTF-8 is signed as it came, and refused later as a value, not as a signature."""
    encoded = []
    for piece in raw_query.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        name_bytes, value_bytes = unquote_to_bytes(name), unquote_to_bytes(value)
        if presigned and name_bytes == b"X-Amz-Signature":
            continue
        encoded.append((quote_from_bytes(name_bytes, safe="-_.~"), quote_from_bytes(value_bytes, safe="-_.~")))
    return "&".join(f"{name}={value}" for name, value in sorted(encoded))


def _header_value(request: SignedRequest, name: str) -> str:
    return " ".join(request.headers.get(name, "").split())


def query_pairs(query_string: str, *, strict: bool = False) -> list[tuple[str, str]]:
    """The raw query's pairs, decoded ('+' is a plus sign here, as AWS's clients encode a space as %20). Bytes that
    are not UTF-8 become U+FFFD, or with ``strict`` a ValidationException."""
    pairs = []
    errors = "strict" if strict else "replace"
    for piece in query_string.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            try:
                pairs.append((unquote(name, errors=errors), unquote(value, errors=errors)))
            except UnicodeDecodeError:
                raise LambdaError(
                    "ValidationException", f"The query parameter {name[:64]} is not UTF-8 text.", status=400
                ) from None
    return pairs


def _incomplete(message: str) -> LambdaError:
    return LambdaError("IncompleteSignatureException", message, status=403)


def _invalid_signature(message: str) -> LambdaError:
    return LambdaError("InvalidSignatureException", message, status=403)

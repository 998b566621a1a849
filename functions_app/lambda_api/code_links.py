"""GetFunction's ``Code.Location``: as on Lambda, a link that downloads the function's package for ten minutes
without credentials (Lambda's is a presigned S3 URL). The link carries a token signed with the platform's secret
key: the package's hash and its owner, checked again when it is followed."""

from __future__ import annotations

from django.core import signing
from django.db.models import Q
from django.http import HttpRequest, HttpResponse

from functions_app.code_storage import code_store
from functions_app.models import Function, Version

LINK_MAX_AGE_S = 600
_SALT = "ephemera.lambda-api.code-location"
PATH_PREFIX = "/code-downloads/"


def code_location(*, origin: str, owner_id: int, sha256: str) -> str:
    token = signing.dumps({"owner": owner_id, "sha256": sha256}, salt=_SALT, compress=True)
    return f"{origin}{PATH_PREFIX}{token}/"


def code_download(request: HttpRequest, token: str) -> HttpResponse:
    try:
        claim = signing.loads(token, salt=_SALT, max_age=LINK_MAX_AGE_S)
    except signing.SignatureExpired:
        return _refused(403, "This link to a function's code has expired: call GetFunction again for a new one.")
    except signing.BadSignature:
        return _refused(403, "This link to a function's code is not one Ephemera gave.")
    owner_id, sha256 = claim["owner"], claim["sha256"]
    still_owned = Q(owner_id=owner_id, code__sha256=sha256)
    if (
        not Function.objects.filter(still_owned).exists()
        and not Version.objects.filter(function__owner_id=owner_id, code__sha256=sha256).exists()
    ):
        return _refused(404, "The function this link named no longer has this code.")
    response = HttpResponse(code_store().get(sha256), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{sha256[:12]}.zip"'
    return response


def _refused(status: int, message: str) -> HttpResponse:
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")

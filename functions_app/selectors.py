"""Reads of the function registry. Every selector takes the caller as ``owner``: another tenant's object is
indistinguishable from a missing one (404), in lists and lookups alike."""

from __future__ import annotations

import io
import json
import random
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet

from console.exceptions import ResourceNotFound, ServiceError
from console.redis import redis_client
from functions_app.code import handler_module_candidates, zip_read_member
from functions_app.code_storage import code_store
from functions_app.models import LATEST, Alias, DeadLetter, Function, Invocation, TestEvent, Version


def function_list(*, owner: User, search: str = "", runtime: str = "") -> QuerySet[Function]:
    functions = Function.objects.filter(owner=owner).select_related("code")
    if search:
        functions = functions.filter(Q(name__icontains=search) | Q(description__icontains=search))
    if runtime:
        functions = functions.filter(runtime=runtime)
    return functions


def function_get(*, owner: User, name: str) -> Function:
    try:
        return Function.objects.select_related("code").get(owner=owner, name=name)
    except Function.DoesNotExist:
        raise ResourceNotFound(f"Function not found: {name}") from None


def version_list(*, function: Function) -> QuerySet[Version]:
    return function.versions.select_related("code").order_by("number")


def version_get(*, function: Function, number: int) -> Version:
    try:
        return function.versions.select_related("code").get(number=number)
    except Version.DoesNotExist:
        raise ResourceNotFound(f"{function.name} has no version {number}.") from None


def alias_list(*, function: Function) -> QuerySet[Alias]:
    return function.aliases.select_related("version", "additional_version")


def alias_get(*, function: Function, name: str) -> Alias:
    try:
        return function.aliases.select_related("version", "additional_version").get(name=name)
    except Alias.DoesNotExist:
        raise ResourceNotFound(f"{function.name} has no alias {name!r}.") from None


def test_event_list(*, function: Function) -> QuerySet[TestEvent]:
    return function.test_events.all()


def test_event_get(*, function: Function, name: str) -> TestEvent:
    try:
        return function.test_events.get(name=name)
    except TestEvent.DoesNotExist:
        raise ResourceNotFound(f"{function.name} has no test event {name!r}.") from None


test_event_list.__test__ = False  # type: ignore[attr-defined]
test_event_get.__test__ = False  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ResolvedTarget:
    """What an invocation runs: `$LATEST` (version None) or a published version, and how it was named."""

    function: Function
    version: Version | None
    qualifier: str

    @property
    def version_label(self) -> str:
        return str(self.version.number) if self.version else LATEST


def qualifier_resolve(
    *, function: Function, qualifier: str = LATEST, rng: random.Random | None = None
) -> ResolvedTarget:
    """`$LATEST`, a version number, or an alias (whose weighted second version is picked at random)."""
    if qualifier in ("", LATEST):
        return ResolvedTarget(function, None, LATEST)
    if qualifier.isascii() and qualifier.isdigit():  # str.isdigit() is also true of "²", which int() refuses
        version = version_get(function=function, number=int(qualifier))
        return ResolvedTarget(function, version, str(version.number))  # "01" names version 1, and says "1"
    alias = alias_get(function=function, name=qualifier)
    draw = (rng or random).random()
    if alias.additional_version and draw < alias.additional_weight:
        return ResolvedTarget(function, alias.additional_version, qualifier)
    return ResolvedTarget(function, alias.version, qualifier)


def invocation_list(
    *,
    owner: User,
    function_name: str = "",
    status: str = "",
    is_cold: bool | None = None,
    executed_version: str = "",
    since: datetime | None = None,
) -> QuerySet[Invocation]:
    invocations = Invocation.objects.filter(owner=owner).select_related("function")
    if function_name:
        invocations = invocations.filter(function__name=function_name)
    if status:
        invocations = invocations.filter(status=status)
    if is_cold is not None:
        invocations = invocations.filter(is_cold=is_cold)
    if executed_version:
        invocations = invocations.filter(executed_version=executed_version)
    if since is not None:
        invocations = invocations.filter(queued_at__gte=since)
    return invocations


def invocation_get(*, owner: User, invocation_id: str) -> Invocation:
    try:
        return Invocation.objects.select_related("function").get(owner=owner, pk=invocation_id)
    except (Invocation.DoesNotExist, ValueError, ValidationError):
        raise ResourceNotFound(f"Invocation not found: {invocation_id}") from None


# When the sweeper last finished (a Unix time), written by functions_app.sweeper.invocations_sweep.
SWEPT_AT_KEY = "ephemera:control:swept_at"


def sweeper_age_s() -> float | None:
    """Seconds since the sweeper (the control worker) last ran; None if it never has (or not for an hour)."""
    swept_at = redis_client().get(SWEPT_AT_KEY)
    return None if swept_at is None else max(time.time() - float(swept_at), 0.0)


def executor_hosts() -> list[dict]:
    """The live executor hosts as their heartbeats describe them (sandbox tier, warm environments)."""
    client = redis_client()
    keys = sorted(client.scan_iter(match="ephemera:hosts:*", count=100))
    return [json.loads(raw) for raw in client.mget(keys) if raw] if keys else []


def dead_letter_list(
    *, owner: User, function_name: str = "", condition: str = "", replayed: bool | None = None
) -> QuerySet[DeadLetter]:
    letters = DeadLetter.objects.filter(owner=owner).select_related("function")
    if function_name:
        letters = letters.filter(function__name=function_name)
    if condition:
        letters = letters.filter(condition=condition)
    if replayed is not None:
        letters = letters.filter(replayed_as__isnull=not replayed)
    return letters


def dead_letter_get(*, owner: User, pk: int) -> DeadLetter:
    try:
        return DeadLetter.objects.select_related("function", "owner").get(owner=owner, pk=pk)
    except DeadLetter.DoesNotExist:
        raise ResourceNotFound(f"Dead letter not found: {pk}") from None


# ---- the console's package browser ------------------------------------------------------------------------------

# The largest file the console shows (and edits) in the browser's editor; larger ones are listed, not opened.
FILE_VIEW_MAX_BYTES = 1024 * 1024


@dataclass(frozen=True)
class PackageFile:
    name: str
    size: int


@dataclass(frozen=True)
class PackageView:
    """The files of a deployment package and one of them opened: ``text`` is None when the file is binary or too
    large to show. ``handler_module`` is the handler's module in the package ("" when it has none)."""

    files: list[PackageFile]
    name: str
    text: str | None
    handler_module: str


def package_view(*, sha256: str, handler: str, name: str = "") -> PackageView:
    """The file list of the package stored as ``sha256`` with one file opened (by default the handler's module);
    a name that is not in the package is ResourceNotFound."""
    zip_bytes = code_store().get(sha256)
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        files = sorted(
            (PackageFile(info.filename, info.file_size) for info in archive.infolist() if not info.is_dir()),
            key=lambda file: file.name,
        )
    sizes = {file.name: file.size for file in files}
    module = next((candidate for candidate in handler_module_candidates(handler) if candidate in sizes), "")
    name = name or module
    if not name:
        return PackageView(files, "", None, module)
    if name not in sizes:
        raise ResourceNotFound(f"The package has no file {name!r}.")
    return PackageView(files, name, _package_text(zip_bytes, name, sizes[name]), module)


def _package_text(zip_bytes: bytes, name: str, size: int) -> str | None:
    if size > FILE_VIEW_MAX_BYTES:
        return None
    try:
        text = zip_read_member(zip_bytes, name, FILE_VIEW_MAX_BYTES).decode("utf-8")
    except (ServiceError, UnicodeDecodeError):
        return None
    return None if "\x00" in text else text

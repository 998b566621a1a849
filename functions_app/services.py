"""Writes to the function registry, and the retention of its invocation history. Every rule Lambda enforces on
configuration is checked here, so the API, the console forms and the admin-free management commands share one set
of rules."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import re
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from console.exceptions import PreconditionFailed, RequestTooLarge, ResourceConflict, ResourceNotFound, ServiceError
from console.models import AccessKey
from functions_app import code as code_pkg
from functions_app.code_storage import code_store
from functions_app.models import (
    DEAD_LETTER,
    EPHEMERAL_MAX_MB,
    EPHEMERAL_MIN_MB,
    EVENT_AGE_MAX_S,
    EVENT_AGE_MIN_S,
    LATEST,
    MEMORY_MAX_MB,
    MEMORY_MIN_MB,
    RETRIES_MAX,
    TERMINAL_STATUSES,
    TIMEOUT_MAX_S,
    TIMEOUT_MIN_S,
    Alias,
    BucketNotification,
    CodeArtifact,
    EventSourceMapping,
    Function,
    Invocation,
    Runtime,
    ScheduleTick,
    TestEvent,
    Version,
)
from functions_app.notices import function_changed
from functions_app.secrets import env_decrypt, env_encrypt, env_reencrypt

FUNCTION_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ALIAS_NAME_RE = re.compile(r"^(?!\d+$)[A-Za-z0-9_-]{1,128}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]+$")
RUNTIME_LABEL_RE = re.compile(r"^python3\.\d{1,2}$")
TEST_EVENT_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,25}$")
ENV_MAX_BYTES = 4096
TEST_EVENTS_PER_FUNCTION = 10
TEST_EVENT_MAX_BYTES = 1024 * 1024
# Names the runtime sets itself (Lambda reserves the same ones).
RESERVED_ENV_NAMES = frozenset(
    {
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_EXECUTION_ENV",
        "AWS_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
        "TZ",
    }
)
RESERVED_ENV_PREFIXES = ("AWS_LAMBDA_", "EPHEMERA_")

CONFIG_FIELDS = (
    "description",
    "runtime",
    "handler",
    "memory_mb",
    "timeout_s",
    "ephemeral_storage_mb",
    "network_enabled",
    "reserved_concurrency",
    "max_retry_attempts",
    "max_event_age_s",
    "on_success_destination",
    "on_failure_destination",
    "role",
    "runtime_label",
    "event_invoke_config_at",
)


@dataclass(frozen=True)
class CodeUpload:
    """New code, either a zip's bytes or inline source files by name."""

    zip_bytes: bytes | None = None
    files: dict[str, str] | None = None

    def to_zip(self) -> bytes:
        if self.zip_bytes is not None:
            return self.zip_bytes
        return code_pkg.zip_from_files(self.files or {})


# ---- validation -------------------------------------------------------------------------------------------


def _invalid(field: str, message: str, type_: str = "InvalidParameterValue") -> ServiceError:
    return ServiceError(f"{field}: {message}", details={field: [message]}, type=type_)


def _check_range(field: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _invalid(field, f"Must be an integer from {low} to {high}.")


def _reserved_concurrency_validate(value: Any) -> None:
    # Reserved concurrency beyond the account's limit could never be used (Lambda refuses it too); None: unreserved.
    if value is not None:
        _check_range("reserved_concurrency", value, 0, settings.ACCOUNT_CONCURRENCY_LIMIT)


def config_validate(fields: dict[str, Any]) -> None:
    """Check every configuration field present in ``fields``; unknown fields are the caller's bug."""
    checks = {
        "memory_mb": lambda v: _check_range("memory_mb", v, MEMORY_MIN_MB, MEMORY_MAX_MB),
        "timeout_s": lambda v: _check_range("timeout_s", v, TIMEOUT_MIN_S, TIMEOUT_MAX_S),
        "ephemeral_storage_mb": lambda v: _check_range("ephemeral_storage_mb", v, EPHEMERAL_MIN_MB, EPHEMERAL_MAX_MB),
        "max_retry_attempts": lambda v: _check_range("max_retry_attempts", v, 0, RETRIES_MAX),
        "max_event_age_s": lambda v: _check_range("max_event_age_s", v, EVENT_AGE_MIN_S, EVENT_AGE_MAX_S),
        "reserved_concurrency": _reserved_concurrency_validate,
        "runtime": _runtime_validate,
        "description": lambda v: _text_validate("description", v, 256),
        "network_enabled": _network_validate,
        "environment": environment_validate,
        "on_success_destination": lambda v: _destination_validate("on_success_destination", v),
        "on_failure_destination": lambda v: _destination_validate("on_failure_destination", v),
        "role": lambda v: _text_validate("role", v, 256),
        "runtime_label": _runtime_label_validate,
    }
    for field, value in fields.items():
        if field in checks:
            checks[field](value)


def _destination_validate(field: str, value: Any) -> None:
    """ "" (none), "dead-letter" (the inbox) or "function:<name>" (see ``_destinations_check``)."""
    if value in ("", DEAD_LETTER):
        return
    if isinstance(value, str) and value.startswith("function:") and FUNCTION_NAME_RE.match(value[len("function:") :]):
        return
    raise _invalid(field, 'Use "", "dead-letter" or "function:<name>".')


def _destinations_check(*, owner_id: int, name: str, fields: dict[str, Any], current: Function | None = None) -> None:
    """A destination being set must name a function of the same owner, or the function itself (recursion is
    bounded at delivery). One that stays as it was is not checked again: the function it names may have been
    deleted since, which is allowed; a failure sent there then lands in the dead-letter inbox."""
    for field in ("on_success_destination", "on_failure_destination"):
        value = fields.get(field, "")
        if not value.startswith("function:") or (current is not None and getattr(current, field) == value):
            continue
        target = value.removeprefix("function:")
        if target != name and not Function.objects.filter(owner_id=owner_id, name=target).exists():
            raise _invalid(field, f"There is no function named {target!r} to send events to.")


def _runtime_validate(value: Any) -> None:
    if value not in Runtime.values:
        raise _invalid("runtime", f"Unsupported runtime {value!r}; choose one of {', '.join(Runtime.values)}.")


def _runtime_label_validate(value: Any) -> None:
    # The Python runtime a Lambda tool named (functions_app/lambda_api); it runs on ``runtime``.
    if value != "" and (not isinstance(value, str) or not RUNTIME_LABEL_RE.match(value)):
        raise _invalid("runtime_label", "Must name a Python runtime, such as python3.12.")


def _text_validate(field: str, value: Any, limit: int) -> None:
    if not isinstance(value, str) or len(value) > limit:
        raise _invalid(field, f"Must be text of at most {limit} characters.")


def _network_validate(value: Any) -> None:
    _bool_validate("network_enabled", value)
    if value and not settings.FUNCTION_NETWORK_ALLOWED:
        raise _invalid("network_enabled", "Outbound network is turned off on this platform by its operator.")


def _bool_validate(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _invalid(field, "Must be true or false.")


def environment_validate(variables: Any) -> None:
    if not isinstance(variables, dict):
        raise _invalid("environment", "Must be an object of NAME: value strings.")
    for name, value in variables.items():
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            raise _invalid("environment", f"{name!r} is not a valid name (a letter, then letters, digits or _).")
        if name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES):
            raise _invalid("environment", f"{name} is reserved by the runtime.", "ReservedEnvironmentVariable")
        if not isinstance(value, str):
            raise _invalid("environment", f"The value of {name} must be a string.")
    size = sum(len(name.encode()) + len(value.encode()) for name, value in variables.items())
    if size > ENV_MAX_BYTES:
        raise _invalid("environment", f"Variables take {size} bytes; the limit is {ENV_MAX_BYTES} bytes in total.")


def function_name_validate(name: Any) -> None:
    if not isinstance(name, str) or not FUNCTION_NAME_RE.match(name):
        raise _invalid("name", "Use 1 to 64 letters, digits, hyphens or underscores.")


def _revision_check(current: uuid.UUID, expected: str | uuid.UUID | None) -> None:
    if expected is not None and str(expected) != str(current):
        raise PreconditionFailed(
            "The resource changed since you read it (revision_id does not match). Read it again and retry."
        )


# ---- revisions ----------------------------------------------------------------------------------------------

REVISED_ATTEMPTS = 5
Revised = TypeVar("Revised", Function, Alias)


def _revised(row: Revised, revision_id: str | None, changes_for: Callable[[Revised], dict[str, Any]]) -> Revised:
    """Write ``changes_for(row)`` and a new revision_id as one ``UPDATE … WHERE revision_id = <the revision the
    changes were computed from>``. The database evaluates that condition atomically (PostgreSQL re-checks it on
    the newest row after waiting for a concurrent writer), so of two concurrent edits of one revision only one
    can win; a read-check-save would let both.

    With the caller's ``revision_id`` the loser gets 412. Without one, the row is read again and the changes are
    computed again from it (the checks too, e.g. a handler against the code now stored), so a concurrent
    writer's change is never overwritten by a stale copy.
    """
    for _ in range(REVISED_ATTEMPTS):
        _revision_check(row.revision_id, revision_id)
        fields = {**changes_for(row), "revision_id": uuid.uuid4(), "updated_at": timezone.now()}
        if type(row).objects.filter(pk=row.pk, revision_id=row.revision_id).update(**fields):
            for name, value in fields.items():
                setattr(row, name, value)
            return row
        row = _reread(row)
    raise ResourceConflict(f"{row} is being changed by other requests at this moment; try again.")


def _reread(row: Revised) -> Revised:
    current = type(row).objects.filter(pk=row.pk).first()
    if current is None:
        raise ResourceNotFound(f"{row} no longer exists.")
    return current


# ---- code ---------------------------------------------------------------------------------------------------


def artifact_store(*, zip_bytes: bytes, handler: str) -> CodeArtifact:
    """Validate a package against its handler, store it by content hash and record it once."""
    summary = code_pkg.zip_inspect(zip_bytes)
    module_path = code_pkg.handler_validate(handler, summary)
    code_pkg.syntax_check(code_pkg.zip_read_member(zip_bytes, module_path), module_path)
    sha256 = hashlib.sha256(zip_bytes).hexdigest()
    code_store().put(sha256, zip_bytes)
    artifact, _ = CodeArtifact.objects.get_or_create(
        sha256=sha256,
        defaults={
            "size_bytes": len(zip_bytes),
            "unzipped_bytes": summary.unzipped_bytes,
            "file_count": summary.file_count,
        },
    )
    return artifact


def _artifact_check_handler(artifact: CodeArtifact, handler: str) -> None:
    """A handler change must still point at a module in the current code."""
    zip_bytes = code_store().get(artifact.sha256)
    summary = code_pkg.zip_inspect(zip_bytes)
    module_path = code_pkg.handler_validate(handler, summary)
    code_pkg.syntax_check(code_pkg.zip_read_member(zip_bytes, module_path), module_path)


def code_with_module_replaced(*, function: Function, module: str, source: str) -> CodeUpload:
    """`$LATEST`'s package with one module's text replaced and every other file kept byte for byte (the
    console's editor saves this way)."""
    current = code_store().get(function.code.sha256)
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(current)) as package, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for info in package.infolist():
            if info.filename != module:
                out.writestr(info, package.read(info))
        out.writestr(module, source)
    return CodeUpload(zip_bytes=buffer.getvalue())


# ---- functions ----------------------------------------------------------------------------------------------


def function_create(
    *,
    owner: User,
    name: str,
    handler: str,
    code: CodeUpload,
    environment: dict[str, str] | None = None,
    **config: Any,
) -> Function:
    function_name_validate(name)
    unknown = set(config) - set(CONFIG_FIELDS)
    if unknown:
        raise ServiceError(f"Unknown configuration fields: {', '.join(sorted(unknown))}.")
    environment = environment or {}
    config_validate({**config, "environment": environment})
    _destinations_check(owner_id=owner.pk, name=name, fields=config)
    if Function.objects.filter(owner=owner, name=name).exists():
        raise ResourceConflict(f"A function named {name!r} already exists.", type="ResourceConflict")
    artifact = artifact_store(zip_bytes=code.to_zip(), handler=handler)
    function = Function(owner=owner, name=name, handler=handler, code=artifact, **config, **_environment(environment))
    try:
        with transaction.atomic():
            function.save()
    except IntegrityError:
        raise ResourceConflict(f"A function named {name!r} already exists.") from None
    return function


def _environment(variables: dict[str, str]) -> dict[str, Any]:
    """The stored fields of an environment: the values encrypted, the names in clear (to show them masked)."""
    return {"environment_ciphertext": env_encrypt(variables), "environment_keys": sorted(variables)}


def function_update_configuration(
    *, function: Function, revision_id: str | None = None, environment: dict[str, str] | None = None, **changes: Any
) -> Function:
    """Change the fields given, and only those: a concurrent change of the others is kept (see ``_revised``)."""
    unknown = set(changes) - set(CONFIG_FIELDS)
    if unknown:
        raise ServiceError(f"Unknown configuration fields: {', '.join(sorted(unknown))}.")
    config_validate({**changes, **({"environment": environment} if environment is not None else {})})
    fields = {**changes, **(_environment(environment) if environment is not None else {})}

    def changes_for(current: Function) -> dict[str, Any]:
        _destinations_check(owner_id=current.owner_id, name=current.name, fields=changes, current=current)
        if "handler" in changes and changes["handler"] != current.handler:
            _artifact_check_handler(current.code, changes["handler"])
        return fields

    updated = _revised(function, revision_id, changes_for)
    function_changed(function_id=updated.pk)
    return updated


def environment_edited(*, function: Function, remove: list[str], changes: dict[str, str]) -> dict[str, str] | None:
    """The variables after removing and setting some, or None for "unchanged": values are write-only in the
    console, so a page can add, replace or remove a variable but never sees the others' values."""
    if not remove and not changes:
        return None
    current = env_decrypt(function.environment_ciphertext)
    return {name: value for name, value in current.items() if name not in remove} | changes


def function_update_code(*, function: Function, code: CodeUpload, revision_id: str | None = None) -> Function:
    zip_bytes = code.to_zip()
    artifacts: dict[str, CodeArtifact] = {}  # by the handler they were checked against

    def changes_for(current: Function) -> dict[str, Any]:
        if current.handler not in artifacts:
            artifacts[current.handler] = artifact_store(zip_bytes=zip_bytes, handler=current.handler)
        return {"code": artifacts[current.handler]}

    updated = _revised(function, revision_id, changes_for)
    function_changed(function_id=updated.pk)
    return updated


def function_delete(*, function: Function) -> None:
    # Aliases point at versions with PROTECT, so they go first.
    from functions_app.stream_sources import stream_groups, stream_groups_destroy  # it calls the invoke service

    function_id = function.pk
    groups = stream_groups(function=function)
    with transaction.atomic():
        function.aliases.all().delete()
        function.delete()
        function_changed(function_id=function_id)  # its environments go at once (after the commit)
        transaction.on_commit(lambda: stream_groups_destroy(groups))  # its stream mappings' consumer groups


# ---- versions -----------------------------------------------------------------------------------------------

_SNAPSHOT_FIELDS = (
    "description",
    "runtime",
    "handler",
    "memory_mb",
    "timeout_s",
    "ephemeral_storage_mb",
    "network_enabled",
    "environment_ciphertext",
    "environment_keys",
    "code",
    "role",
    "runtime_label",
)


def _config_sha256(function: Function) -> str:
    # Keyed by SECRET_KEY: the digest covers environment values and must not help guess them offline.
    snapshot = {
        "code": function.code.sha256,
        "runtime": function.runtime,
        "handler": function.handler,
        "memory_mb": function.memory_mb,
        "timeout_s": function.timeout_s,
        "ephemeral_storage_mb": function.ephemeral_storage_mb,
        "network_enabled": function.network_enabled,
        "environment": env_decrypt(function.environment_ciphertext),
    }
    # Only when set, so that the digests of versions published before these fields existed stay the same.
    snapshot.update(
        {field: getattr(function, field) for field in ("role", "runtime_label") if getattr(function, field)}
    )
    message = json.dumps(snapshot, sort_keys=True).encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


def version_publish(
    *, function: Function, description: str | None = None, revision_id: str | None = None
) -> tuple[Version, bool]:
    """Snapshot `$LATEST`; returns (version, created). Unchanged code and configuration return the latest
    version instead of a new one, as Lambda does."""
    if description is not None:
        _text_validate("description", description, 256)
    with transaction.atomic():
        # The snapshot is of the row as it is, locked until the version exists: on PostgreSQL by FOR UPDATE (a
        # concurrent UPDATE … WHERE revision_id waits, then sees its revision unchanged by a publish), on SQLite
        # by the IMMEDIATE transaction's write lock. So the revision checked is the revision published, and two
        # publishes cannot take one number.
        locked = Function.objects.select_for_update().filter(pk=function.pk).first()
        if locked is None:
            raise ResourceNotFound(f"{function} no longer exists.")
        _revision_check(locked.revision_id, revision_id)
        config_sha = _config_sha256(locked)
        latest = locked.versions.order_by("-number").first()
        if latest and latest.config_sha256 == config_sha:
            return latest, False
        number = (locked.versions.aggregate(top=Max("number"))["top"] or 0) + 1
        snapshot = {field: getattr(locked, field) for field in _SNAPSHOT_FIELDS}
        if description is not None:
            snapshot["description"] = description
        version = Version.objects.create(function=locked, number=number, config_sha256=config_sha, **snapshot)
        return version, True


# ---- aliases ------------------------------------------------------------------------------------------------


def _version_of(function: Function, number: Any, field: str) -> Version:
    if isinstance(number, bool) or not isinstance(number, int):
        raise _invalid(field, "Must be a published version number.")
    try:
        return function.versions.get(number=number)
    except Version.DoesNotExist:
        raise ResourceNotFound(
            f"{function.name} has no version {number}.", details={field: ["No such version."]}
        ) from None


def _routing(function: Function, version: Version, additional: Any, weight: Any) -> tuple[Version | None, float]:
    if additional is None:
        if weight not in (None, 0, 0.0):
            raise _invalid("additional_weight", "A weight needs an additional_version.")
        return None, 0.0
    other = _version_of(function, additional, "additional_version")
    if other.pk == version.pk:
        raise _invalid("additional_version", "Must differ from the alias's main version.")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0.0 <= weight <= 1.0:
        raise _invalid("additional_weight", "Must be a number from 0.0 to 1.0.")
    return other, float(weight)


def alias_create(
    *,
    function: Function,
    name: str,
    version: int,
    description: str = "",
    additional_version: int | None = None,
    additional_weight: float | None = None,
) -> Alias:
    if not isinstance(name, str) or not ALIAS_NAME_RE.match(name) or name == LATEST:
        raise _invalid("name", "Use 1 to 128 letters, digits, hyphens or underscores, not only digits.")
    _text_validate("description", description, 256)
    main = _version_of(function, version, "version")
    other, weight = _routing(function, main, additional_version, additional_weight)
    try:
        with transaction.atomic():
            return Alias.objects.create(
                function=function,
                name=name,
                description=description,
                version=main,
                additional_version=other,
                additional_weight=weight,
            )
    except IntegrityError:
        raise ResourceConflict(f"{function.name} already has an alias named {name!r}.") from None


_UNSET: Any = object()


def alias_update(
    *,
    alias: Alias,
    version: int | None = None,
    description: str | None = None,
    additional_version: Any = _UNSET,
    additional_weight: Any = _UNSET,
    revision_id: str | None = None,
) -> Alias:
    """Move an alias. Leaving the routing out keeps it; passing ``additional_version=None`` removes it."""
    if description is not None:
        _text_validate("description", description, 256)

    def changes_for(current: Alias) -> dict[str, Any]:
        main = _version_of(current.function, version, "version") if version is not None else current.version
        if additional_version is _UNSET and additional_weight is _UNSET:
            other, weight = current.additional_version, current.additional_weight
            if other is not None and other.pk == main.pk:
                other, weight = None, 0.0
        else:
            now = current.additional_version.number if current.additional_version else None
            wanted = now if additional_version is _UNSET else additional_version
            weight_in = current.additional_weight if additional_weight is _UNSET else additional_weight
            if wanted is None and additional_weight is _UNSET:
                weight_in = None  # removing the second version removes its share too
            other, weight = _routing(current.function, main, wanted, weight_in)
        fields = {"version": main, "additional_version": other, "additional_weight": weight}
        return fields if description is None else {**fields, "description": description}

    return _revised(alias, revision_id, changes_for)


def alias_delete(*, alias: Alias) -> None:
    alias.delete()


def version_delete(*, version: Version) -> None:
    """Delete a published version; one an alias points at stays (Lambda refuses too)."""
    in_use = Alias.objects.filter(Q(version=version) | Q(additional_version=version)).values_list("name", flat=True)
    if in_use:
        names = ", ".join(sorted(in_use))
        raise ResourceConflict(f"Version {version.number} is used by the aliases {names}; move them first.")
    version.delete()


# ---- tags and resource policy (Lambda's API) ----------------------------------------------------------------

TAGS_MAX = 50
TAG_KEY_MAX, TAG_VALUE_MAX = 128, 256


def tags_validate(tags: dict[str, str]) -> None:
    if len(tags) > TAGS_MAX:
        raise _invalid("tags", f"A function has at most {TAGS_MAX} tags.")
    for key, value in tags.items():
        if not isinstance(key, str) or not 1 <= len(key) <= TAG_KEY_MAX or key.lower().startswith("aws:"):
            raise _invalid("tags", f"Tag keys are 1 to {TAG_KEY_MAX} characters and do not start with aws:.")
        if not isinstance(value, str) or len(value) > TAG_VALUE_MAX:
            raise _invalid("tags", f"The value of tag {key!r} must be text of at most {TAG_VALUE_MAX} characters.")


def function_tags_set(
    *, function: Function, add: dict[str, str] | None = None, remove: tuple[str, ...] | list[str] = ()
) -> Function:
    """Add or replace some tags and remove others. Tags are no part of the configuration (no new revision)."""
    tags_validate(add or {})
    with transaction.atomic():
        locked = Function.objects.select_for_update().filter(pk=function.pk).first()
        if locked is None:
            raise ResourceNotFound(f"{function} no longer exists.")
        tags = {key: value for key, value in locked.tags.items() if key not in remove} | (add or {})
        if len(tags) > TAGS_MAX:
            raise _invalid("tags", f"A function has at most {TAGS_MAX} tags.")
        Function.objects.filter(pk=function.pk).update(tags=tags)
    function.tags = tags
    return function


def function_policy_statement_add(
    *, function: Function, statement: dict[str, Any], revision_id: str | None = None
) -> Function:
    """Add a statement to the function's resource policy; its ``Sid`` is unique within the policy."""

    def changes_for(current: Function) -> dict[str, Any]:
        if any(kept.get("Sid") == statement["Sid"] for kept in current.policy_statements):
            raise ResourceConflict(
                "The statement id (sid) provided already exists. Please choose a new statement id, or remove the "
                "existing statement."
            )
        return {"policy_statements": [*current.policy_statements, statement]}

    return _revised(function, revision_id, changes_for)


def function_policy_statement_remove(
    *, function: Function, sid: str, qualifier: str, revision_id: str | None = None
) -> Function:
    def changes_for(current: Function) -> dict[str, Any]:
        kept = [
            statement
            for statement in current.policy_statements
            if not (statement.get("Sid") == sid and statement.get("qualifier", "") == qualifier)
        ]
        if len(kept) == len(current.policy_statements):
            raise ResourceNotFound(f"The function {current.name} has no policy statement {sid!r}.")
        return {"policy_statements": kept}

    return _revised(function, revision_id, changes_for)


# ---- test events --------------------------------------------------------------------------------------------


def _event_json(event: Any) -> str:
    text = json.dumps(event)
    if len(text.encode()) > TEST_EVENT_MAX_BYTES:
        raise RequestTooLarge(f"A saved test event may be at most {TEST_EVENT_MAX_BYTES} bytes.")
    return text


def test_event_create(*, function: Function, name: str, event: Any) -> TestEvent:
    if not isinstance(name, str) or not TEST_EVENT_NAME_RE.match(name):
        raise _invalid("name", "Use 1 to 25 letters, digits, hyphens or underscores.")
    body = _event_json(event)
    with transaction.atomic():
        Function.objects.select_for_update().get(pk=function.pk)
        if function.test_events.count() >= TEST_EVENTS_PER_FUNCTION:
            raise ServiceError(
                f"A function keeps at most {TEST_EVENTS_PER_FUNCTION} test events; delete one first.",
                type="LimitExceeded",
            )
        if function.test_events.filter(name=name).exists():
            raise ResourceConflict(f"{function.name} already has a test event named {name!r}.")
        return TestEvent.objects.create(function=function, name=name, event_json=body)


def test_event_update(*, test_event: TestEvent, event: Any) -> TestEvent:
    test_event.event_json = _event_json(event)
    test_event.save(update_fields=["event_json", "updated_at"])
    return test_event


def test_event_delete(*, test_event: TestEvent) -> None:
    test_event.delete()


test_event_create.__test__ = False  # type: ignore[attr-defined]
test_event_update.__test__ = False  # type: ignore[attr-defined]
test_event_delete.__test__ = False  # type: ignore[attr-defined]


# ---- key rotation -------------------------------------------------------------------------------------------


def environments_reencrypt(*, progress: Any = None, batch: int = 500) -> dict[str, int]:
    """Re-encrypt every environment and every stored secret (a bucket's or a queue's secret key, a user's access
    key for Lambda's API) with the newest key (MultiFernet.rotate); old keys may then be retired."""
    counts = {}
    for name, model in (("functions", Function), ("versions", Version)):
        done = 0
        for row in model.objects.exclude(environment_ciphertext="").only("pk", "environment_ciphertext").iterator():
            model.objects.filter(pk=row.pk).update(environment_ciphertext=env_reencrypt(row.environment_ciphertext))
            done += 1
            if progress and done % batch == 0:
                progress(done)
        counts[name] = done
    counts["bucket_notifications"] = _secrets_reencrypt(BucketNotification, "secret_access_key")
    counts["event_source_mappings"] = _secrets_reencrypt(EventSourceMapping, "secret_access_key")
    counts["access_keys"] = _secrets_reencrypt(AccessKey, "secret_ciphertext")
    return counts


def _secrets_reencrypt(model: Any, field: str) -> int:
    done = 0
    for pk, secret in model.objects.exclude(**{field: ""}).values_list("pk", field):
        model.objects.filter(pk=pk).update(**{field: env_reencrypt(secret)})
        done += 1
    return done


# ---- invocation history -------------------------------------------------------------------------------------

# Rows per DELETE: the first prune after a long pause may face months of rows, and one statement over all of
# them would hold its locks (and Django's cascade collector its objects) for as long as that takes.
PRUNE_BATCH = 1000


def invocations_prune(*, now: datetime | None = None) -> int:
    """Delete finished invocation rows older than INVOCATION_RETENTION_DAYS; returns how many went.

    Rows still referenced by a dead letter are kept: the dead-letter inbox owns them until deleted. Roll-ups are
    metrics_app's (``metrics_retention``), so charts and costs outlive the rows they were metered from.
    """
    cutoff = (now or timezone.now()) - timedelta(days=settings.INVOCATION_RETENTION_DAYS)
    old = Invocation.objects.filter(
        status__in=TERMINAL_STATUSES, finished_at__lt=cutoff, dead_letter__isnull=True
    ).order_by()
    deleted = 0
    while ids := list(old.values_list("pk", flat=True)[:PRUNE_BATCH]):
        deleted += Invocation.objects.filter(pk__in=ids).delete()[1].get("functions_app.Invocation", 0)
    # A schedule's tick rows guard against firing twice only around its next tick: old ones go with the calls.
    ScheduleTick.objects.filter(tick_at__lt=cutoff).delete()
    return deleted

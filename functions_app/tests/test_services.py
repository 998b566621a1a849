from __future__ import annotations

import random
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from console.exceptions import PreconditionFailed, ResourceConflict, ResourceNotFound, ServiceError
from functions_app import selectors, services
from functions_app.models import Alias, DeadLetter, Function, Invocation, InvocationStatus, Version
from functions_app.secrets import env_decrypt
from functions_app.tests.zips import make_zip

pytestmark = pytest.mark.django_db

HELLO = "def handler(event, context):\n    return event\n"


def test_it_creates_a_function_with_lambda_defaults(make_function):
    function = make_function()
    assert (function.memory_mb, function.timeout_s, function.ephemeral_storage_mb) == (128, 3, 512)
    assert function.max_retry_attempts == 2 and function.max_event_age_s == 21600
    assert not function.network_enabled
    assert len(function.code.sha256) == 64


def test_it_stores_identical_code_once(make_function):
    first = make_function(name="one")
    second = make_function(name="two")
    assert first.code_id == second.code_id


def test_it_refuses_a_second_function_with_the_same_name_for_the_same_owner(make_function):
    make_function()
    with pytest.raises(ResourceConflict):
        make_function()


def test_it_allows_the_same_name_for_another_owner(make_function, other_user):
    make_function()
    assert make_function(owner=other_user).owner == other_user


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "slash/name", "dot.name", "ünicode"])
def test_it_rejects_bad_function_names(make_function, name):
    with pytest.raises(ServiceError, match="name"):
        make_function(name=name)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("memory_mb", 127),
        ("memory_mb", 10241),
        ("timeout_s", 0),
        ("timeout_s", 901),
        ("ephemeral_storage_mb", 511),
        ("max_retry_attempts", 3),
        ("max_event_age_s", 59),
        ("runtime", "python2.7"),
        ("memory_mb", "256"),
        ("network_enabled", "yes"),
    ],
)
def test_it_rejects_configuration_out_of_lambda_ranges(make_function, field, value):
    with pytest.raises(ServiceError) as caught:
        make_function(**{field: value})
    assert field in caught.value.details


def test_it_refuses_network_access_when_the_operator_turned_it_off(make_function, settings):
    function = make_function(network_enabled=True)
    settings.FUNCTION_NETWORK_ALLOWED = False
    with pytest.raises(ServiceError) as caught:
        make_function(name="other", network_enabled=True)
    assert "turned off" in caught.value.details["network_enabled"][0]
    with pytest.raises(ServiceError):
        services.function_update_configuration(function=function, description="x", network_enabled=True)
    assert not services.function_update_configuration(function=function, network_enabled=False).network_enabled


def test_it_rejects_code_without_the_handler_module(make_function):
    with pytest.raises(ServiceError) as caught:
        make_function(handler="other.handler")
    assert caught.value.type == "HandlerModuleNotFound"
    assert not Function.objects.exists()


def test_it_rejects_code_with_a_syntax_error(make_function):
    with pytest.raises(ServiceError) as caught:
        make_function(code=services.CodeUpload(files={"app.py": "def handler(:\n"}))
    assert caught.value.type == "UserCodeSyntaxError"


@pytest.mark.parametrize(
    ("variables", "fragment"),
    [
        ({"1BAD": "x"}, "not a valid name"),
        ({"with-dash": "x"}, "not a valid name"),
        ({"AWS_REGION": "x"}, "reserved"),
        ({"AWS_LAMBDA_FUNCTION_NAME": "x"}, "reserved"),
        ({"BIG": "x" * 4094}, "4096"),
        ({"NUM": 1}, "must be a string"),
    ],
)
def test_it_rejects_bad_environment_variables(make_function, variables, fragment):
    with pytest.raises(ServiceError, match=fragment):
        make_function(environment=variables)


def test_it_never_stores_an_environment_value_in_plaintext(make_function):
    function = make_function(environment={"DB_PASSWORD": "hunter2-very-secret"})
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM functions_app_function WHERE id = %s", [function.pk])
        row = " ".join(str(column) for column in cursor.fetchone())
    assert "hunter2-very-secret" not in row
    assert "DB_PASSWORD" in row  # the names are kept to show them masked
    assert env_decrypt(Function.objects.get(pk=function.pk).environment_ciphertext) == {
        "DB_PASSWORD": "hunter2-very-secret"
    }


def test_it_keeps_old_environment_values_readable_after_a_key_rotation(make_function, settings):
    from cryptography.fernet import Fernet

    function = make_function(environment={"TOKEN": "abc"})
    settings.FERNET_KEYS = [Fernet.generate_key().decode(), *settings.FERNET_KEYS]
    assert env_decrypt(function.environment_ciphertext) == {"TOKEN": "abc"}


def test_publishing_snapshots_code_and_configuration_that_later_changes_do_not_touch(make_function):
    function = make_function(memory_mb=256, environment={"MODE": "one"})
    version, created = services.version_publish(function=function)
    assert created and version.number == 1
    services.function_update_configuration(function=function, memory_mb=1024, environment={"MODE": "two"})
    services.function_update_code(
        function=function, code=services.CodeUpload(files={"app.py": "def handler(e, c):\n    return 2\n"})
    )
    version = Version.objects.get(pk=version.pk)
    assert version.memory_mb == 256
    assert env_decrypt(version.environment_ciphertext) == {"MODE": "one"}
    assert version.code_id != Function.objects.get(pk=function.pk).code_id


def test_publishing_an_unchanged_function_returns_the_latest_version(make_function):
    function = make_function()
    first, _ = services.version_publish(function=function)
    again, created = services.version_publish(function=function)
    assert not created and again.pk == first.pk
    services.function_update_configuration(function=function, timeout_s=10)
    second, created = services.version_publish(function=function)
    assert created and second.number == 2


def test_a_stale_revision_id_is_refused(make_function):
    function = make_function()
    stale = function.revision_id
    services.function_update_configuration(function=function, timeout_s=5)
    with pytest.raises(PreconditionFailed):
        services.function_update_configuration(function=function, timeout_s=6, revision_id=str(stale))


def test_changing_the_handler_checks_the_current_code(make_function):
    function = make_function()
    with pytest.raises(ServiceError):
        services.function_update_configuration(function=function, handler="nothere.handler")
    zip_code = services.CodeUpload(
        zip_bytes=make_zip({"app.py": "def handler(e, c): pass\n", "b.py": "def go(e, c): pass\n"})
    )
    services.function_update_code(function=function, code=zip_code)
    assert services.function_update_configuration(function=function, handler="b.go").handler == "b.go"


def _published(make_function, count):
    function = make_function()
    for timeout in range(count):
        services.function_update_configuration(function=function, timeout_s=timeout + 1)
        services.version_publish(function=function)
    return function


def test_an_alias_routes_by_its_weight(make_function):
    function = _published(make_function, 2)
    services.alias_create(function=function, name="live", version=1, additional_version=2, additional_weight=0.25)
    rng = random.Random(7)
    picks = [
        selectors.qualifier_resolve(function=function, qualifier="live", rng=rng).version.number for _ in range(2000)
    ]
    share = picks.count(2) / len(picks)
    assert 0.21 < share < 0.29


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"additional_version": 2, "additional_weight": 1.5}, "additional_weight"),
        ({"additional_version": 2, "additional_weight": -0.1}, "additional_weight"),
        ({"additional_version": 1, "additional_weight": 0.5}, "additional_version"),
        ({"additional_weight": 0.5}, "additional_weight"),
    ],
)
def test_alias_weights_are_validated(make_function, changes, field):
    function = _published(make_function, 2)
    with pytest.raises(ServiceError) as caught:
        services.alias_create(function=function, name="live", version=1, **changes)
    assert field in caught.value.details


def test_an_alias_cannot_point_at_a_missing_version(make_function):
    function = _published(make_function, 1)
    with pytest.raises(ResourceNotFound):
        services.alias_create(function=function, name="live", version=9)


@pytest.mark.parametrize("name", ["123", "$LATEST", "bad name", ""])
def test_alias_names_follow_lambda_rules(make_function, name):
    function = _published(make_function, 1)
    with pytest.raises(ServiceError):
        services.alias_create(function=function, name=name, version=1)


def test_updating_an_alias_keeps_or_clears_its_routing(make_function):
    function = _published(make_function, 3)
    alias = services.alias_create(
        function=function, name="live", version=1, additional_version=2, additional_weight=0.1
    )
    alias = services.alias_update(alias=alias, version=3)
    assert (alias.version.number, alias.additional_version.number, alias.additional_weight) == (3, 2, 0.1)
    alias = services.alias_update(alias=alias, additional_version=None, additional_weight=None)
    assert alias.additional_version is None and alias.additional_weight == 0.0


def test_a_function_keeps_at_most_ten_test_events(make_function):
    function = make_function()
    for number in range(10):
        services.test_event_create(function=function, name=f"e{number}", event={"n": number})
    with pytest.raises(ServiceError) as caught:
        services.test_event_create(function=function, name="e10", event={})
    assert caught.value.type == "LimitExceeded"


def test_deleting_a_function_removes_its_versions_and_aliases(make_function):
    function = _published(make_function, 1)
    services.alias_create(function=function, name="live", version=1)
    services.function_delete(function=function)
    assert not Version.objects.exists()


def test_rotating_keys_re_encrypts_every_environment_so_the_old_key_can_go(make_function, settings):
    from io import StringIO

    from cryptography.fernet import Fernet
    from django.core.management import call_command

    from console.access_keys import access_key_create, access_key_secret, access_keys_forget_checked

    function = make_function(environment={"TOKEN": "abc"})
    services.version_publish(function=function)
    access_key, secret = access_key_create(owner=function.owner, name="aws")
    old_key = settings.FERNET_KEYS[0]
    settings.FERNET_KEYS = [Fernet.generate_key().decode(), old_key]
    out = StringIO()
    call_command("rotate_env_keys", stdout=out, stderr=StringIO())
    assert "1 functions and 1 versions" in out.getvalue()
    settings.FERNET_KEYS = settings.FERNET_KEYS[:1]  # the old key is retired
    assert env_decrypt(Function.objects.get(pk=function.pk).environment_ciphertext) == {"TOKEN": "abc"}
    assert env_decrypt(Version.objects.get(function=function).environment_ciphertext) == {"TOKEN": "abc"}
    access_keys_forget_checked()  # as a restarted web process would, with only the new key
    assert access_key_secret(access_key_id=access_key.access_key_id) == (function.owner, secret)


# ---- revisions: every change is a conditional update --------------------------------------------------------
# Each test reads a row, then another writer changes it "behind the service's back" (between the service's read
# and its write), as a concurrent request would.


def _changed_behind_the_back(row, **fields):
    type(row).objects.filter(pk=row.pk).update(revision_id=uuid.uuid4(), **fields)


def test_a_configuration_update_with_a_revision_id_that_was_current_when_read_loses_to_a_concurrent_change(
    make_function,
):
    function = make_function()
    read = Function.objects.get(pk=function.pk)
    _changed_behind_the_back(read, timeout_s=7)
    with pytest.raises(PreconditionFailed):
        services.function_update_configuration(function=read, memory_mb=512, revision_id=str(read.revision_id))
    row = Function.objects.get(pk=function.pk)
    assert (row.memory_mb, row.timeout_s) == (128, 7)


def test_a_configuration_update_without_a_revision_id_keeps_a_concurrent_writers_change(make_function):
    function = make_function()
    read = Function.objects.get(pk=function.pk)
    _changed_behind_the_back(read, timeout_s=7, description="theirs")
    updated = services.function_update_configuration(function=read, memory_mb=512)
    row = Function.objects.get(pk=function.pk)
    assert (row.memory_mb, row.timeout_s, row.description) == (512, 7, "theirs")
    assert updated.revision_id == row.revision_id and updated.timeout_s == 7


def test_a_handler_change_is_checked_against_the_code_a_concurrent_upload_wrote(make_function):
    function = make_function(code=services.CodeUpload(files={"app.py": HELLO, "b.py": "def go(e, c): pass\n"}))
    read = Function.objects.get(pk=function.pk)
    only_app = services.artifact_store(zip_bytes=make_zip({"app.py": HELLO}), handler="app.handler")
    _changed_behind_the_back(read, code=only_app)
    with pytest.raises(ServiceError) as caught:
        services.function_update_configuration(function=read, handler="b.go")
    assert caught.value.type == "HandlerModuleNotFound"
    row = Function.objects.get(pk=function.pk)
    assert (row.handler, row.code_id) == ("app.handler", only_app.pk)


def test_a_code_update_is_checked_against_the_handler_a_concurrent_change_wrote(make_function):
    function = make_function(code=services.CodeUpload(files={"app.py": HELLO, "b.py": "def go(e, c): pass\n"}))
    read = Function.objects.get(pk=function.pk)
    _changed_behind_the_back(read, handler="b.go")
    with pytest.raises(ServiceError) as caught:
        services.function_update_code(function=read, code=services.CodeUpload(files={"app.py": HELLO}))
    assert caught.value.type == "HandlerModuleNotFound"
    row = Function.objects.get(pk=function.pk)
    assert (row.handler, row.code_id) == ("b.go", function.code_id)


def test_a_code_update_with_a_stale_revision_id_is_refused(make_function):
    function = make_function()
    read = Function.objects.get(pk=function.pk)
    _changed_behind_the_back(read, timeout_s=7)
    with pytest.raises(PreconditionFailed):
        services.function_update_code(
            function=read, code=services.CodeUpload(files={"app.py": HELLO + "\n"}), revision_id=str(read.revision_id)
        )
    assert Function.objects.get(pk=function.pk).code_id == function.code_id


def test_an_update_of_a_deleted_function_is_not_found(make_function):
    function = make_function()
    read = Function.objects.get(pk=function.pk)
    Function.objects.filter(pk=function.pk).delete()
    with pytest.raises(ResourceNotFound):
        services.function_update_configuration(function=read, memory_mb=512)


def test_publishing_with_a_revision_id_that_was_current_when_read_loses_to_a_concurrent_change(make_function):
    function = make_function()
    read = Function.objects.get(pk=function.pk)
    _changed_behind_the_back(read, memory_mb=512)
    with pytest.raises(PreconditionFailed):
        services.version_publish(function=read, revision_id=str(read.revision_id))
    assert not Version.objects.exists()


def test_publishing_snapshots_the_function_as_it_is_not_as_it_was_read(make_function):
    function = make_function()
    read = Function.objects.get(pk=function.pk)
    _changed_behind_the_back(read, memory_mb=512)
    version, created = services.version_publish(function=read)
    assert created and version.memory_mb == 512


def test_an_alias_update_with_a_revision_id_that_was_current_when_read_loses_to_a_concurrent_change(make_function):
    function = _published(make_function, 3)
    alias = services.alias_create(function=function, name="live", version=1)
    read = Alias.objects.get(pk=alias.pk)
    _changed_behind_the_back(read, version=Version.objects.get(function=function, number=2))
    with pytest.raises(PreconditionFailed):
        services.alias_update(alias=read, version=3, revision_id=str(read.revision_id))
    assert Alias.objects.get(pk=alias.pk).version.number == 2


def test_an_alias_update_without_a_revision_id_keeps_a_concurrent_writers_change(make_function):
    function = _published(make_function, 3)
    alias = services.alias_create(function=function, name="live", version=1, description="first")
    read = Alias.objects.get(pk=alias.pk)
    second = Version.objects.get(function=function, number=2)
    _changed_behind_the_back(read, additional_version=second, additional_weight=0.5)
    services.alias_update(alias=read, description="second")
    row = Alias.objects.get(pk=alias.pk)
    assert (row.description, row.version.number, row.additional_version_id, row.additional_weight) == (
        "second",
        1,
        second.pk,
        0.5,
    )


def _invocation(function, *, days_ago, status=InvocationStatus.SUCCEEDED):
    """A row that finished ``days_ago`` days ago, or never (None)."""
    finished_at = None if days_ago is None else timezone.now() - timedelta(days=days_ago)
    return Invocation.objects.create(
        owner=function.owner, function=function, payload="{}", memory_mb=128, status=status, finished_at=finished_at
    )


def test_pruning_deletes_finished_rows_past_retention_and_keeps_the_rest(make_function, settings):
    settings.INVOCATION_RETENTION_DAYS = 30
    function = make_function()
    old = [_invocation(function, days_ago=40, status=status) for status in (InvocationStatus.SUCCEEDED, "failed")]
    recent = _invocation(function, days_ago=1)
    running = _invocation(function, days_ago=None, status=InvocationStatus.RUNNING)
    assert services.invocations_prune() == len(old)
    assert set(Invocation.objects.values_list("pk", flat=True)) == {recent.pk, running.pk}


def test_pruning_keeps_an_old_row_that_a_dead_letter_still_references(make_function, settings):
    settings.INVOCATION_RETENTION_DAYS = 30
    function = make_function()
    kept = _invocation(function, days_ago=40, status="failed")
    DeadLetter.objects.create(
        owner=function.owner, function=function, invocation=kept, condition="RetriesExhausted", attempts=3
    )
    assert services.invocations_prune() == 0
    assert Invocation.objects.get().pk == kept.pk


def test_pruning_deletes_in_batches(make_function, settings, monkeypatch):
    settings.INVOCATION_RETENTION_DAYS = 30
    monkeypatch.setattr(services, "PRUNE_BATCH", 2)
    function = make_function()
    for _ in range(5):
        _invocation(function, days_ago=40)
    with CaptureQueriesContext(connection) as queries:
        assert services.invocations_prune() == 5
    statements = [query["sql"].split() for query in queries]
    deletes = [words for words in statements if words[:2] == ["DELETE", "FROM"] and "invocation" in words[2]]
    assert len(deletes) == 3 and not Invocation.objects.exists()


def test_pruning_is_scheduled_hourly_on_the_control_queue(settings):
    entry = next(
        entry for entry in settings.CELERY_BEAT_SCHEDULE.values() if entry["task"] == "ephemera.invocations_prune"
    )
    assert entry["schedule"] == 3600.0
    assert settings.CELERY_TASK_ROUTES["ephemera.invocations_prune"] == {"queue": "control"}

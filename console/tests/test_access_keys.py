"""Access keys for Lambda's API: made, listed, rotated, revoked and remembered, in the services, the REST API and the
account page."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from console import access_keys
from console.exceptions import ResourceNotFound, ServiceError
from console.models import AccessKey

pytestmark = pytest.mark.django_db


def test_a_key_has_an_aws_shaped_id_and_a_secret_stored_only_encrypted(user):
    key, secret = access_keys.access_key_create(owner=user, name="laptop")
    assert re.fullmatch(r"EPHA[A-Z2-7]{16}", key.access_key_id)
    assert re.fullmatch(r"[A-Za-z0-9/+]{40}", secret)
    stored = AccessKey.objects.get(pk=key.pk)
    assert secret not in stored.secret_ciphertext and stored.secret_ciphertext
    assert access_keys.access_key_secret(access_key_id=key.access_key_id) == (user, secret)


def test_the_account_id_is_the_users_id_in_twelve_digits(user):
    assert access_keys.account_id_of(user) == f"{user.pk:012d}" and len(access_keys.account_id_of(user)) == 12


def test_a_user_holds_at_most_ten_active_keys_and_needs_a_name(user):
    for number in range(access_keys.ACCESS_KEYS_PER_USER_MAX):
        access_keys.access_key_create(owner=user, name=f"k{number}")
    with pytest.raises(ServiceError, match="revoke one first"):
        access_keys.access_key_create(owner=user, name="one more")
    with pytest.raises(ServiceError, match="name"):
        access_keys.access_key_create(owner=user, name="  ")


def test_a_revoked_key_and_a_deactivated_owner_stop_working_at_once_though_remembered(user):
    key, secret = access_keys.access_key_create(owner=user, name="ci")
    assert access_keys.access_key_secret(access_key_id=key.access_key_id) == (user, secret)  # now remembered
    access_keys.access_key_revoke(access_key=key)
    assert access_keys.access_key_secret(access_key_id=key.access_key_id) is None
    other, _ = access_keys.access_key_create(owner=user, name="ci-2")
    assert access_keys.access_key_secret(access_key_id=other.access_key_id) is not None
    user.is_active = False
    user.save()
    assert access_keys.access_key_secret(access_key_id=other.access_key_id) is None


def test_rotation_without_grace_revokes_the_old_key_and_with_grace_lets_it_run_out(user):
    old, _ = access_keys.access_key_create(owner=user, name="deploy")
    new, new_secret = access_keys.access_key_rotate(access_key=old)
    assert new.name == "deploy" and new.access_key_id != old.access_key_id
    assert access_keys.access_key_secret(access_key_id=old.access_key_id) is None
    assert access_keys.access_key_secret(access_key_id=new.access_key_id) == (user, new_secret)
    newer, _ = access_keys.access_key_rotate(access_key=new, grace_s=3600)
    new.refresh_from_db()
    assert new.is_active and timedelta(minutes=59) < new.expires_at - timezone.now() <= timedelta(hours=1)
    assert access_keys.access_key_secret(access_key_id=new.access_key_id) is not None
    AccessKey.objects.filter(pk=new.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    access_keys.access_keys_forget_checked()
    assert access_keys.access_key_secret(access_key_id=new.access_key_id) is None
    with pytest.raises(ServiceError, match="grace_s"):
        access_keys.access_key_rotate(access_key=newer, grace_s=8 * 24 * 3600)
    with pytest.raises(ServiceError, match="no longer active"):
        access_keys.access_key_rotate(access_key=old)


def test_the_last_use_is_recorded_to_the_minute(user):
    key, _ = access_keys.access_key_create(owner=user, name="x")
    access_keys.access_key_secret(access_key_id=key.access_key_id)
    key.refresh_from_db()
    assert key.last_used_at is not None and timezone.now() - key.last_used_at < timedelta(seconds=10)


def test_another_users_key_is_not_found(user, other_user):
    key, _ = access_keys.access_key_create(owner=user, name="mine")
    with pytest.raises(ResourceNotFound):
        access_keys.access_key_get(owner=other_user, access_key_id=key.access_key_id)


# ---- the REST API --------------------------------------------------------------------------------------------------


def test_the_api_makes_lists_rotates_and_revokes_keys_showing_a_secret_only_once(api):
    created = api.post("/api/v1/access-keys/", {"name": "terraform"}, format="json")
    assert created.status_code == 201, created.content
    key_id, secret = created.json()["access_key_id"], created.json()["secret_access_key"]
    listed = api.get("/api/v1/access-keys/").json()["results"]
    assert [row["access_key_id"] for row in listed] == [key_id] and "secret_access_key" not in listed[0]
    assert secret not in api.get(f"/api/v1/access-keys/{key_id}/").content.decode()
    rotated = api.post(f"/api/v1/access-keys/{key_id}/rotate/", {"grace_s": 60}, format="json")
    assert rotated.status_code == 201 and rotated.json()["secret_access_key"] != secret
    assert api.get(f"/api/v1/access-keys/{key_id}/").json()["expires_at"] is not None
    assert api.delete(f"/api/v1/access-keys/{key_id}/").status_code == 204
    assert api.get(f"/api/v1/access-keys/{key_id}/").json()["active"] is False


def test_the_api_refuses_bad_input_and_hides_other_users_keys(api, other_api):
    assert api.post("/api/v1/access-keys/", {"name": ""}, format="json").status_code == 400
    assert api.post("/api/v1/access-keys/", {"name": "x", "extra": 1}, format="json").status_code == 400
    key_id = api.post("/api/v1/access-keys/", {"name": "mine"}, format="json").json()["access_key_id"]
    bad_grace = api.post(f"/api/v1/access-keys/{key_id}/rotate/", {"grace_s": -1}, format="json")
    assert bad_grace.status_code == 400 and bad_grace.json()["type"]
    assert other_api.get(f"/api/v1/access-keys/{key_id}/").status_code == 404
    assert other_api.delete(f"/api/v1/access-keys/{key_id}/").status_code == 404
    assert other_api.post(f"/api/v1/access-keys/{key_id}/rotate/", {}, format="json").status_code == 404
    assert other_api.get("/api/v1/access-keys/").json()["count"] == 0


def test_the_account_endpoint_says_the_account_id_region_and_endpoint(api, user):
    account = api.get("/api/v1/account/").json()
    assert account == {
        "account_id": f"{user.pk:012d}",
        "region": "us-east-1",
        "lambda_endpoint": "http://testserver",
    }


# ---- the account page ----------------------------------------------------------------------------------------------


def test_the_account_page_makes_a_key_and_shows_its_secret_once_with_the_environment_to_paste(client, user):
    client.force_login(user)
    page = client.get("/account/").content.decode()
    assert f"{user.pk:012d}" in page and "us-east-1" in page and "You have no access key yet" in page
    made = client.post("/account/access-keys/", {"name": "laptop"})
    assert made.status_code == 200
    key = AccessKey.objects.get(owner=user)
    _, secret = access_keys.access_key_secret(access_key_id=key.access_key_id)
    body = made.content.decode()
    assert f"export AWS_ACCESS_KEY_ID={key.access_key_id}" in body
    assert (
        f"export AWS_SECRET_ACCESS_KEY={secret}" in body and "export AWS_ENDPOINT_URL_LAMBDA=http://testserver" in body
    )
    later = client.get("/account/").content.decode()
    assert key.access_key_id in later and secret not in later


def test_the_account_page_rotates_and_revokes_only_its_users_keys(client, user, other_user):
    key, _ = access_keys.access_key_create(owner=user, name="ci")
    client.force_login(other_user)
    assert client.post(f"/account/access-keys/{key.access_key_id}/revoke/").status_code == 404
    client.force_login(user)
    rotated = client.post(f"/account/access-keys/{key.access_key_id}/rotate/", {"grace_s": "3600"})
    assert rotated.status_code == 200 and "export AWS_SECRET_ACCESS_KEY=" in rotated.content.decode()
    key.refresh_from_db()
    assert key.expires_at is not None and key.is_active
    assert client.post(f"/account/access-keys/{key.access_key_id}/revoke/").status_code == 302
    key.refresh_from_db()
    assert not key.is_active
    refused = client.post("/account/access-keys/", {"name": ""})
    assert refused.status_code == 400


def test_rotation_takes_a_json_object_or_nothing_and_grace_as_an_integer(api):
    key_id = api.post("/api/v1/access-keys/", {"name": "ci"}, format="json").json()["access_key_id"]
    for body in ([], "", 0, {"grace_s": "5"}):
        answer = api.post(f"/api/v1/access-keys/{key_id}/rotate/", body, format="json")
        assert answer.status_code == 400, body
    assert api.get(f"/api/v1/access-keys/{key_id}/").json()["active"] is True
    assert api.post(f"/api/v1/access-keys/{key_id}/rotate/").status_code == 201

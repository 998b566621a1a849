"""URLs of the browser console's pages (included at the site root).

A function's pages live under ``functions/<name>/``, and ``<fn:name>`` matches only what a function may be called
(letters, digits, hyphens and underscores), so a page of the console that is not a function's own sits at a path
no function name can take: the create page is ``functions/+new/``, never ``functions/new/`` (a function may be
called "new"). Below a function every fixed segment follows its name, and aliases, test events and files are one
level deeper than the actions on them, so no name of theirs can shadow another page either.
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path, register_converter

from functions_app import http_api_views, views
from functions_app.services import FUNCTION_NAME_RE


class FunctionNameConverter:
    regex = FUNCTION_NAME_RE.pattern.removeprefix("^").removesuffix("$")

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(FunctionNameConverter, "fn")

page_urlpatterns = [
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("account/", views.account, name="account"),
    path("account/keys/", views.api_key_create, name="api_key_create"),
    path("account/keys/<int:key_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
    path("account/access-keys/", views.access_key_create_view, name="access_key_create"),
    path("account/access-keys/<str:access_key_id>/rotate/", views.access_key_rotate_view, name="access_key_rotate"),
    path("account/access-keys/<str:access_key_id>/revoke/", views.access_key_revoke_view, name="access_key_revoke"),
    path("account/password/", views.PasswordChange.as_view(), name="password_change"),
    path("functions/", views.function_list, name="function_list"),
    path("functions/+new/", views.function_create, name="function_create"),
    path("functions/+import-sam/", views.sam_import_view, name="sam_import"),
    path("functions/<fn:name>/", views.function_code, name="function_code"),
    path("functions/<fn:name>/test/", views.function_test, name="function_test"),
    path("functions/<fn:name>/test/invoke/", views.function_invoke, name="function_invoke"),
    path("functions/<fn:name>/test/events/", views.test_event_create, name="test_event_create"),
    path("functions/<fn:name>/test/events/<str:event_name>/", views.test_event_update, name="test_event_update"),
    path("functions/<fn:name>/test/events/<str:event_name>/delete/", views.test_event_delete, name="test_event_delete"),
    path("functions/<fn:name>/monitor/", views.function_monitor, name="function_monitor"),
    path("functions/<fn:name>/versions/", views.function_versions, name="function_versions"),
    path("functions/<fn:name>/versions/publish/", views.version_publish, name="version_publish"),
    path("functions/<fn:name>/versions/<int:number>/", views.version_code, name="version_code"),
    path("functions/<fn:name>/aliases/", views.alias_create, name="alias_create"),
    path("functions/<fn:name>/aliases/<str:alias_name>/", views.alias_update, name="alias_update"),
    path("functions/<fn:name>/aliases/<str:alias_name>/delete/", views.alias_delete, name="alias_delete"),
    path("functions/<fn:name>/triggers/", views.function_triggers, name="function_triggers"),
    path("functions/<fn:name>/triggers/urls/", views.function_url_create, name="function_url_create"),
    path("functions/<fn:name>/triggers/schedules/", views.schedule_create, name="schedule_create"),
    path(
        "functions/<fn:name>/triggers/schedules/<str:schedule>/toggle/",
        views.schedule_toggle,
        name="schedule_toggle",
    ),
    path(
        "functions/<fn:name>/triggers/schedules/<str:schedule>/delete/",
        views.schedule_delete,
        name="schedule_delete",
    ),
    path("functions/<fn:name>/triggers/buckets/", views.bucket_notification_create, name="bucket_notification_create"),
    path(
        "functions/<fn:name>/triggers/buckets/<str:notification>/toggle/",
        views.bucket_notification_toggle,
        name="bucket_notification_toggle",
    ),
    path(
        "functions/<fn:name>/triggers/buckets/<str:notification>/delete/",
        views.bucket_notification_delete,
        name="bucket_notification_delete",
    ),
    path("functions/<fn:name>/triggers/urls/<str:url_id>/", views.function_url_update, name="function_url_update"),
    path(
        "functions/<fn:name>/triggers/urls/<str:url_id>/delete/",
        views.function_url_delete,
        name="function_url_delete",
    ),
    path("functions/<fn:name>/invocations/", views.function_invocations, name="function_invocations"),
    path("functions/<fn:name>/configuration/", views.function_configuration, name="function_configuration"),
    path("functions/<fn:name>/delete/", views.function_delete, name="function_delete"),
    path("invocations/<str:invocation_id>/", views.invocation_detail, name="invocation_detail"),
    path("invocations/<str:invocation_id>/row/", views.invocation_row, name="invocation_row"),
    path("http-apis/", http_api_views.http_api_list, name="http_api_list"),
    path("http-apis/+new/", http_api_views.http_api_create, name="http_api_create"),
    path("http-apis/<str:name>/", http_api_views.http_api_detail, name="http_api_detail"),
    path("http-apis/<str:name>/edit/", http_api_views.http_api_update, name="http_api_update"),
    path("http-apis/<str:name>/delete/", http_api_views.http_api_delete, name="http_api_delete"),
    path("dead-letters/", views.dead_letter_list, name="dead_letter_list"),
    path("dead-letters/<int:letter_id>/replay/", views.dead_letter_replay_view, name="dead_letter_replay"),
    path("dead-letters/<int:letter_id>/delete/", views.dead_letter_delete_view, name="dead_letter_delete"),
]

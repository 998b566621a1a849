"""URLs of the browser console's function pages (included at the site root)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from functions_app import views

page_urlpatterns = [
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("functions/", views.function_list, name="function_list"),
    path("functions/new/", views.function_create, name="function_create"),
    path("functions/<str:name>/", views.function_code, name="function_code"),
    path("functions/<str:name>/test/", views.function_test, name="function_test"),
    path("functions/<str:name>/test/invoke/", views.function_invoke, name="function_invoke"),
    path("functions/<str:name>/test/events/", views.test_event_create, name="test_event_create"),
    path("functions/<str:name>/test/events/<str:event_name>/", views.test_event_update, name="test_event_update"),
    path(
        "functions/<str:name>/test/events/<str:event_name>/delete/", views.test_event_delete, name="test_event_delete"
    ),
    path("functions/<str:name>/monitor/", views.function_monitor, name="function_monitor"),
    path("functions/<str:name>/versions/", views.function_versions, name="function_versions"),
    path("functions/<str:name>/versions/publish/", views.version_publish, name="version_publish"),
    path("functions/<str:name>/aliases/", views.alias_create, name="alias_create"),
    path("functions/<str:name>/aliases/<str:alias_name>/", views.alias_update, name="alias_update"),
    path("functions/<str:name>/aliases/<str:alias_name>/delete/", views.alias_delete, name="alias_delete"),
    path("functions/<str:name>/invocations/", views.function_invocations, name="function_invocations"),
    path("functions/<str:name>/configuration/", views.function_configuration, name="function_configuration"),
    path("functions/<str:name>/delete/", views.function_delete, name="function_delete"),
    path("invocations/<str:invocation_id>/", views.invocation_detail, name="invocation_detail"),
    path("invocations/<str:invocation_id>/row/", views.invocation_row, name="invocation_row"),
    path("dead-letters/", views.dead_letter_list, name="dead_letter_list"),
    path("dead-letters/<int:letter_id>/replay/", views.dead_letter_replay_view, name="dead_letter_replay"),
    path("dead-letters/<int:letter_id>/delete/", views.dead_letter_delete_view, name="dead_letter_delete"),
]

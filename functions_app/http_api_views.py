"""The console's HTTP API pages: the list (and a new API), and an API's routes, stages, invoke URLs, curl lines
and last day's requests per route, with its definition edited as JSON. Views parse the form, call one service and
render."""

from __future__ import annotations

import json
from datetime import timedelta

from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from console.auth import SignedInRequest
from console.exceptions import ServiceError
from functions_app import forms, http_apis
from functions_app.models import HttpApi
from functions_app.views import console_page
from metrics_app.selectors import http_api_triggers

EXAMPLE_DEFINITION = {
    "routes": [
        {"route_key": "GET /items/{id}", "function": "my-function"},
        {"route_key": "POST /items", "function": "my-function", "throttle": {"rate": 10, "burst": 20}},
    ],
    "stages": [{"name": "$default"}, {"name": "prod", "variables": {"table": "items-prod"}}],
    "authorizers": [],
    "cors": {"allow_origins": ["https://app.example.com"], "allow_methods": ["GET", "POST"]},
}


def _put_error(form: forms.HttpApiForm, error: ServiceError) -> None:
    details = error.details if isinstance(error.details, dict) else {}
    messages = [f"{key}: {message}" for key, values in details.items() for message in values] or [error.message]
    field = "name" if "name" in details else "definition"
    for message in messages:
        form.add_error(field, message)


@console_page
def http_api_list(request: SignedInRequest) -> HttpResponse:
    form = forms.HttpApiForm(initial={"definition": json.dumps(EXAMPLE_DEFINITION, indent=2)})
    return _list_page(request, form)


def _list_page(request: SignedInRequest, form: forms.HttpApiForm, status: int = 200) -> HttpResponse:
    apis = http_apis.http_api_list(owner=request.user)
    return render(request, "functions_app/http_api_list.html", {"apis": apis, "form": form}, status=status)


@console_page
@require_POST
def http_api_create(request: SignedInRequest) -> HttpResponse:
    form = forms.HttpApiForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            api = http_apis.http_api_create(
                owner=request.user, name=data["name"], description=data["description"], definition=data["definition"]
            )
            return redirect("http_api_detail", name=api.name)
        except ServiceError as error:
            _put_error(form, error)
    return _list_page(request, form, status=400)


@console_page
def http_api_detail(request: SignedInRequest, name: str) -> HttpResponse:
    api = http_apis.http_api_get(owner=request.user, name=name)
    initial = {"description": api.description, "definition": json.dumps(api.definition, indent=2)}
    return _detail_page(request, api, forms.HttpApiForm(initial=initial))


def _detail_page(request: SignedInRequest, api: HttpApi, form: forms.HttpApiForm, status: int = 200) -> HttpResponse:
    stages = http_apis.http_api_stages(api=api, scheme=request.scheme or "http", host=request.get_host())
    routes = [
        {**route, "curl": http_apis.route_curl(stages[0][1], route["route_key"])}
        for route in api.definition.get("routes", [])
    ]
    now = timezone.now()
    traffic = http_api_triggers(api=api, start=now - timedelta(hours=24), end=now)
    context = {"api": api, "stages": stages, "routes": routes, "traffic": traffic, "form": form}
    return render(request, "functions_app/http_api_detail.html", context, status=status)


@console_page
@require_POST
def http_api_update(request: SignedInRequest, name: str) -> HttpResponse:
    api = http_apis.http_api_get(owner=request.user, name=name)
    form = forms.HttpApiForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            http_apis.http_api_update(api=api, description=data["description"], definition=data["definition"])
            return redirect("http_api_detail", name=api.name)
        except ServiceError as error:
            _put_error(form, error)
    api.refresh_from_db()
    return _detail_page(request, api, form, status=400)


@console_page
@require_POST
def http_api_delete(request: SignedInRequest, name: str) -> HttpResponse:
    http_apis.http_api_delete(api=http_apis.http_api_get(owner=request.user, name=name))
    return redirect("http_api_list")

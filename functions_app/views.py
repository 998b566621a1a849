"""The browser console's function pages. Views parse a form, call one service or selector (the same ones the
REST API uses) and render; a ``ServiceError`` lands next to the form field it names, never as a 500."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import wraps
from typing import Any

import plotly.io
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.contrib.auth.views import PasswordChangeView
from django.contrib.messages.views import SuccessMessageMixin
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_POST

from console import access_keys, accounts
from console.auth import SignedInRequest
from console.exceptions import ResourceNotFound, ServiceError
from functions_app import (
    bucket_notifications,
    event_sources,
    forms,
    http_apis,
    http_triggers,
    invoke,
    sam,
    schedules,
    selectors,
    services,
    stream_sources,
)
from functions_app.code import ZIPPED_MAX_BYTES, handler_module_candidates
from functions_app.destinations import dead_letter_delete, dead_letter_replay
from functions_app.models import LATEST, DeadLetter, Function, Invocation, InvocationStatus, InvocationType
from metrics_app.charts import monitor_figures, monitor_http_figure, rightsizing_figure, stream_figures
from metrics_app.rightsizing import function_rightsizing
from metrics_app.selectors import function_http_triggers, function_stream_series, function_summaries

TABS = [
    ("code", "Code"),
    ("test", "Test"),
    ("monitor", "Monitor"),
    ("versions", "Versions and aliases"),
    ("triggers", "Triggers"),
    ("invocations", "Invocations"),
    ("configuration", "Configuration"),
]
# Rows per page of the function list, the Invocations tab and the dead letters.
PAGE_SIZE = 50
# The phases of an invocation's timeline, in order: (label, Invocation field in ms, colour). A phase that did not
# happen (None, or 0 ms like a warm start's init) is left out.
# Together they cover every millisecond from accept to finish (functions_app.models.Invocation.overhead_ms).
TIMELINE_PHASES = [
    ("Queue wait", "queue_wait_ms", "#8c959f"),
    ("Prepare", "prepare_ms", "#8d6e63"),
    ("Init", "init_ms", "#e16f24"),
    ("Run", "duration_ms", "#218bff"),
    ("Overhead", "overhead_ms", "#9aa5ad"),
]
PRETTY_JSON_MAX_CHARS = 256 * 1024
_FAILED: Any = object()
# Below this many invocations in the right-sizing window the what-if figures rest on too few samples to trust.
RIGHTSIZING_FEW_INVOCATIONS = 100


def console_page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Sign-in required; a selector's ResourceNotFound (missing, or another tenant's) is the page's 404."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except ResourceNotFound as error:
            raise Http404(error.message) from None

    return login_required(wrapper)


def _attempt(form: Any, call: Callable[[], Any], fallback: str | dict[str, str] | None = None) -> Any:
    """Run a service call; on a ServiceError put it on the form and return ``_FAILED``."""
    try:
        return call()
    except ServiceError as error:
        forms.form_add_service_error(form, error, fallback)
        return _FAILED


def _is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def _pretty_json(text: str) -> str:
    """JSON text indented for reading; anything else (or anything large) as it is."""
    if not text or len(text) > PRETTY_JSON_MAX_CHARS:
        return text
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def _tab(
    request: HttpRequest,
    function: Function,
    tab: str,
    context: dict[str, Any],
    status: int = 200,
    template: str = "",
) -> HttpResponse:
    context = {"function": function, "tabs": TABS, "tab": tab, **context}
    return render(request, template or f"functions_app/tab_{tab}.html", context, status=status)


def _back(request: HttpRequest, default: str) -> HttpResponse:
    """Back to the page a form came from (its ``next`` field, on this site only), else to ``default``."""
    target = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return redirect(target)
    return redirect(default)


@dataclass(frozen=True)
class Page:
    """One page of a list, with the query strings of its neighbours (the other filters kept)."""

    items: list[Any]
    number: int
    has_next: bool
    query: QueryDict

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    def _query(self, number: int) -> str:
        query = self.query.copy()
        query["page"] = str(number)
        return query.urlencode()

    @property
    def previous_query(self) -> str:
        return self._query(self.number - 1)

    @property
    def next_query(self) -> str:
        return self._query(self.number + 1)


def _page(request: HttpRequest, rows: QuerySet) -> Page:
    """The ``?page=`` of a list. One row more than a page is read to tell whether another page follows, so no page
    load counts the whole list (the Invocations tab can hold millions of rows)."""
    text = request.GET.get("page", "1")
    number = int(text) if text.isdigit() and int(text) > 0 else 1
    start = (number - 1) * PAGE_SIZE
    items = list(rows[start : start + PAGE_SIZE + 1])
    query = request.GET.copy()
    query.pop("page", None)
    return Page(items[:PAGE_SIZE], number, len(items) > PAGE_SIZE, query)


# ---- the function list ------------------------------------------------------------------------------------------


@console_page
def function_list(request: SignedInRequest) -> HttpResponse:
    form = forms.FunctionFilterForm(request.GET)
    filters = form.cleaned_data if form.is_valid() else {}
    functions = selectors.function_list(
        owner=request.user, search=filters.get("q", "").strip(), runtime=filters.get("runtime", "")
    )
    page = _page(request, functions)
    summaries = function_summaries(
        owner=request.user,
        since=timezone.now() - timedelta(hours=24),
        function_ids=[function.pk for function in page.items],
    )
    rows = [(function, summaries.get(function.pk)) for function in page.items]
    context = {"rows": rows, "page": page, "filter_form": form, "filtered": any(filters.values())}
    return render(request, "functions_app/function_list.html", context)


@console_page
def sam_import_view(request: SignedInRequest) -> HttpResponse:
    """Upload a SAM template (or a project zip) and show what the import made and skipped."""
    form = forms.SamImportForm(request.POST or None, request.FILES or None)
    report = None
    if request.method == "POST" and form.is_valid():
        report = _attempt(form, lambda: _sam_imported(request.user, form.cleaned_data), "upload")
    status = 400 if request.method == "POST" and (report is None or report is _FAILED) else 200
    context = {"form": form, "report": None if report is _FAILED else report}
    return render(request, "functions_app/sam_import.html", context, status=status)


def _sam_imported(owner: User, data: dict[str, Any]) -> Any:
    upload = data["upload"]
    if upload.size > ZIPPED_MAX_BYTES:
        raise ServiceError(f"The upload is {upload.size} bytes; the limit is {ZIPPED_MAX_BYTES} bytes.")
    content = upload.read()
    keys = sam.queue_keys_of(data["sqs_access_key_id"], data["sqs_secret_access_key"], data["sqs_endpoint_url"])
    options = {"owner": owner, "stack_name": data["stack_name"], "dry_run": data["dry_run"], "queue_keys": keys}
    if content.startswith(b"PK"):
        return sam.sam_project_import(project_zip=content, **options)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ServiceError("The template is not UTF-8 text (or the zip is not a zip).") from None
    return sam.sam_import(template_text=text, **options)


# ---- create -----------------------------------------------------------------------------------------------------


@console_page
def function_create(request: SignedInRequest) -> HttpResponse:
    form = forms.FunctionCreateForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        function = _attempt(
            form,
            lambda: services.function_create(
                owner=request.user,
                name=data["name"],
                code=_code_upload(form, data["handler"]),
                environment=data["environment"],
                **form.config(),
            ),
            fallback={"ResourceConflict": "name", "*": "source"},
        )
        if function is not _FAILED:
            return redirect("function_code", name=function.name)
    if request.method == "GET":
        form.initial["source"] = forms.DEFAULT_SOURCE
    return render(request, "functions_app/function_create.html", {"form": form})


def _code_upload(form: forms.FunctionCreateForm | forms.CodeForm, handler: str) -> services.CodeUpload:
    zip_bytes = form.code_bytes()
    if zip_bytes is not None:
        return services.CodeUpload(zip_bytes=zip_bytes)
    return services.CodeUpload(files={handler_module_candidates(handler)[0]: form.cleaned_data["source"]})


# ---- Code tab ---------------------------------------------------------------------------------------------------


@console_page
def function_code(request: SignedInRequest, name: str) -> HttpResponse:
    """`$LATEST`'s package: its files, one opened in the editor (``?file=``, by default the handler's module)."""
    function = selectors.function_get(owner=request.user, name=name)
    package = selectors.package_view(
        sha256=function.code.sha256, handler=function.handler, name=request.GET.get("file", "")
    )
    form = forms.CodeForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        updated = _attempt(
            form,
            lambda: services.function_update_code(
                function=function,
                code=_code_from(function, package.name, form),
                revision_id=form.cleaned_data["revision_id"] or None,
            ),
            fallback="source",
        )
        if updated is not _FAILED:
            return redirect(_code_url(function, package))
    if request.method == "GET":
        form.initial = {"source": package.text or "", "revision_id": str(function.revision_id)}
    context = {"form": form, "package": package, "editor_mode": _editor_mode(package.name)}
    return _tab(request, function, "code", context)


def _code_url(function: Function, package: selectors.PackageView) -> str:
    """The Code tab with the same file open."""
    url = reverse("function_code", args=[function.name])
    if package.name and package.name != package.handler_module:
        url += "?" + QueryDict.fromkeys(["file"], package.name).urlencode()
    return url


def _editor_mode(file_name: str) -> str:
    """CodeMirror's mode for a file: Python highlighting for modules, plain text for the rest."""
    return "python" if file_name.endswith(".py") else "text/plain"


def _code_from(function: Function, file_name: str, form: forms.CodeForm) -> services.CodeUpload:
    """An uploaded zip as it is, else the current package with the edited file replaced."""
    uploaded = form.code_bytes()
    if uploaded is not None:
        return services.CodeUpload(zip_bytes=uploaded)
    return services.code_with_module_replaced(function=function, module=file_name, source=form.cleaned_data["source"])


# ---- Test tab ---------------------------------------------------------------------------------------------------


def _invoke_form(function: Function, data: Any = None, **kwargs: Any) -> forms.InvokeForm:
    qualifiers = forms.qualifier_choices(
        versions=selectors.version_list(function=function), aliases=selectors.alias_list(function=function)
    )
    return forms.InvokeForm(data, qualifiers=qualifiers, **kwargs)


def _test_context(function: Function, **overrides: Any) -> dict[str, Any]:
    events = list(selectors.test_event_list(function=function))
    context: dict[str, Any] = {
        "events": events,
        "event_forms": [
            (event, forms.TestEventForm(initial={"name": event.name, "event": event.event_json}, prefix=event.name))
            for event in events
        ],
        "invoke_form": _invoke_form(function, initial={"event": events[0].event_json if events else "{}"}),
        "new_form": forms.TestEventForm(auto_id="new_%s"),
        "saved_events": {event.name: event.event_json for event in events},
        "outcome": None,
    }
    return {**context, **overrides}


@console_page
def function_test(request: SignedInRequest, name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    return _tab(request, function, "test", _test_context(function))


@console_page
@require_POST
def function_invoke(request: SignedInRequest, name: str) -> HttpResponse:
    """A synchronous invoke through the same service as the API's."""
    function = selectors.function_get(owner=request.user, name=name)
    form = _invoke_form(function, request.POST)
    outcome = None
    if form.is_valid():
        answer = _attempt(
            form,
            lambda: invoke.function_invoke(
                owner=request.user,
                function=function,
                qualifier=form.cleaned_data["qualifier"] or LATEST,
                raw_payload=form.cleaned_data["event"].encode(),
                invocation_type=InvocationType.SYNC,
            ),
            fallback={"ResourceNotFound": "qualifier"},
        )
        if answer is not _FAILED:
            outcome = answer.outcome
    result = {"outcome": outcome, "invoke_form": form, "result_pretty": _pretty_json(outcome.result) if outcome else ""}
    if _is_htmx(request):
        return render(request, "functions_app/_invoke_result.html", result)
    return _tab(request, function, "test", _test_context(function, **result))


@console_page
@require_POST
def test_event_create(request: SignedInRequest, name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    form = forms.TestEventForm(request.POST, auto_id="new_%s")
    if form.is_valid():
        data = form.cleaned_data
        created = _attempt(
            form, lambda: services.test_event_create(function=function, name=data["name"], event=data["event"])
        )
        if created is not _FAILED:
            return redirect("function_test", name=function.name)
    return _tab(request, function, "test", _test_context(function, new_form=form), status=400)


@console_page
@require_POST
def test_event_update(request: SignedInRequest, name: str, event_name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    test_event = selectors.test_event_get(function=function, name=event_name)
    form = forms.TestEventForm(request.POST, prefix=event_name)
    form.fields["name"].required = False
    if form.is_valid():
        updated = _attempt(
            form, lambda: services.test_event_update(test_event=test_event, event=form.cleaned_data["event"])
        )
        if updated is not _FAILED:
            return redirect("function_test", name=function.name)
    context = _test_context(function)
    context["event_forms"] = [
        (event, form if event.pk == test_event.pk else other) for event, other in context["event_forms"]
    ]
    return _tab(request, function, "test", context, status=400)


@console_page
@require_POST
def test_event_delete(request: SignedInRequest, name: str, event_name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    services.test_event_delete(test_event=selectors.test_event_get(function=function, name=event_name))
    return redirect("function_test", name=function.name)


# ---- Monitor tab ------------------------------------------------------------------------------------------------


@console_page
def function_monitor(request: SignedInRequest, name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    window = request.GET.get("range", "24h")
    if window not in forms.TIME_RANGES:
        window = "24h"
    end = timezone.now()
    start = end - timedelta(hours=forms.TIME_RANGES[window])
    figures = [
        {"id": chart["id"], "title": chart["title"], "json": _figure_json(chart["figure"])}
        for chart in monitor_figures(function=function, start=start, end=end)
    ]
    analysis = function_rightsizing(function=function)
    triggers = function_http_triggers(function=function, start=start, end=end)
    # No HTTP section at all for a function no HTTP trigger called in the range.
    http_figure = monitor_http_figure(function=function, start=start, end=end, triggers=triggers) if triggers else None
    streams = function_stream_series(function=function, start=start, end=end)
    context = {
        "ranges": list(forms.TIME_RANGES),
        "range": window,
        "figures": figures,
        "http_triggers": triggers,
        "http_figure": _figure_json(http_figure) if http_figure else None,
        "stream_figures": [
            {"id": chart["id"], "title": chart["title"], "json": _figure_json(chart["figure"])}
            for chart in (stream_figures(streams) if streams else [])
        ],
        "rightsizing": analysis,
        "rightsizing_figure": _figure_json(rightsizing_figure(analysis)) if analysis.rows else None,
        "rightsizing_few": analysis.invocations_observed < RIGHTSIZING_FEW_INVOCATIONS,
    }
    return _tab(request, function, "monitor", context)


def _figure_json(figure: Any) -> SafeString:
    """A plotly figure (dict or Figure) as JSON safe inside a <script type="application/json"> element."""
    text = plotly.io.to_json(figure, validate=False)
    return mark_safe(text.replace("<", "\\u003C").replace(">", "\\u003E").replace("&", "\\u0026"))  # noqa: S308


# ---- Versions and aliases tab -----------------------------------------------------------------------------------


def _versions_context(function: Function, **overrides: Any) -> dict[str, Any]:
    aliases = list(selectors.alias_list(function=function))
    context: dict[str, Any] = {
        "versions": selectors.version_list(function=function),
        "publish_form": forms.PublishForm(),
        "alias_form": forms.AliasForm(),
        "alias_forms": [(alias, _alias_update_form(alias)) for alias in aliases],
        "published": None,
    }
    return {**context, **overrides}


def _alias_update_form(alias: Any, data: Any = None) -> forms.AliasUpdateForm:
    initial = {
        "name": alias.name,
        "description": alias.description,
        "version": alias.version.number,
        "additional_version": alias.additional_version.number if alias.additional_version else None,
        "additional_weight": alias.additional_weight if alias.additional_version else None,
        "revision_id": str(alias.revision_id),
    }
    return forms.AliasUpdateForm(data, initial=initial, prefix=f"alias-{alias.name}")


@console_page
def function_versions(request: SignedInRequest, name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    return _tab(request, function, "versions", _versions_context(function))


@console_page
def version_code(request: SignedInRequest, name: str, number: int) -> HttpResponse:
    """A published version's package, read-only: its files, one opened (``?file=``)."""
    function = selectors.function_get(owner=request.user, name=name)
    version = selectors.version_get(function=function, number=number)
    package = selectors.package_view(
        sha256=version.code.sha256, handler=version.handler, name=request.GET.get("file", "")
    )
    context = {"version": version, "package": package, "editor_mode": _editor_mode(package.name)}
    return _tab(request, function, "versions", context, template="functions_app/version_code.html")


@console_page
@require_POST
def version_publish(request: SignedInRequest, name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    form = forms.PublishForm(request.POST)
    if form.is_valid():
        description = form.cleaned_data["description"] or None
        published = _attempt(form, lambda: services.version_publish(function=function, description=description))
        if published is not _FAILED:
            return redirect(f"{reverse('function_versions', args=[function.name])}?published={published[0].number}")
    return _tab(request, function, "versions", _versions_context(function, publish_form=form), status=400)


@console_page
@require_POST
def alias_create(request: SignedInRequest, name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    form = forms.AliasForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        created = _attempt(
            form,
            lambda: services.alias_create(
                function=function,
                name=data["name"],
                version=data["version"],
                description=data["description"],
                additional_version=data["additional_version"],
                additional_weight=data["additional_weight"],
            ),
        )
        if created is not _FAILED:
            return redirect("function_versions", name=function.name)
    return _tab(request, function, "versions", _versions_context(function, alias_form=form), status=400)


@console_page
@require_POST
def alias_update(request: SignedInRequest, name: str, alias_name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    alias = selectors.alias_get(function=function, name=alias_name)
    form = _alias_update_form(alias, request.POST)
    if form.is_valid():
        data = form.cleaned_data
        # A blank canary version removes the canary (and its weight) — the service's explicit None.
        updated = _attempt(
            form,
            lambda: services.alias_update(
                alias=alias,
                version=data["version"],
                description=data["description"],
                additional_version=data["additional_version"],
                additional_weight=data["additional_weight"] if data["additional_version"] else None,
                revision_id=data["revision_id"] or None,
            ),
        )
        if updated is not _FAILED:
            return redirect("function_versions", name=function.name)
    context = _versions_context(function)
    context["alias_forms"] = [(a, form if a.pk == alias.pk else f) for a, f in context["alias_forms"]]
    return _tab(request, function, "versions", context, status=400)


@console_page
@require_POST
def alias_delete(request: SignedInRequest, name: str, alias_name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    services.alias_delete(alias=selectors.alias_get(function=function, name=alias_name))
    return redirect("function_versions", name=function.name)


# ---- Triggers tab ---------------------------------------------------------------------------------------------


@console_page
def function_triggers(request: SignedInRequest, name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    return _tab(request, function, "triggers", _triggers_context(request, function))


def _triggers_context(
    request: HttpRequest,
    function: Function,
    *,
    new_form: forms.FunctionUrlForm | None = None,
    edited: tuple[str, forms.FunctionUrlForm] | None = None,
    schedule_form: forms.ScheduleForm | None = None,
    bucket_form: forms.BucketNotificationForm | None = None,
) -> dict[str, Any]:
    """The function's triggers in one place: its function URLs, each with its address, a curl line and its form
    (``edited``: the one whose submitted form is shown again, with its errors)."""
    function_urls = http_triggers.function_url_list(function=function)
    urls = []
    for url in function_urls:
        address = http_triggers.function_url_address(url=url, scheme=request.scheme or "http", host=request.get_host())
        form = edited[1] if edited and edited[0] == url.url_id else None
        initial = forms.FunctionUrlForm.initial_of(url)
        form = form or forms.FunctionUrlForm(initial=initial, auto_id=f"url-{url.url_id}-%s")
        urls.append({"url": url, "address": address, "form": form})
    served = {url.alias.name if url.alias else "" for url in function_urls}
    free = [alias.name for alias in selectors.alias_list(function=function) if alias.name not in served]
    scheme, host = request.scheme or "http", request.get_host()
    api_routes = [
        {"api": api, "route": route, "stage_url": http_apis.http_api_stages(api=api, scheme=scheme, host=host)[0][1]}
        for api, route in http_apis.http_api_routes_to(function=function)
    ]
    return {
        "urls": urls,
        "api_routes": api_routes,
        "schedules": [
            {"schedule": schedule, "state": schedules.schedule_state(schedule=schedule)}
            for schedule in schedules.schedule_list(function=function)
        ],
        "schedule_form": schedule_form
        or forms.ScheduleForm(aliases=[alias.name for alias in selectors.alias_list(function=function)]),
        "bucket_notifications": [
            {
                "notification": notification,
                "state": bucket_notifications.bucket_notification_state(notification=notification),
                "webhook_url": request.build_absolute_uri(f"/api/v1/bucket-events/{notification.pk}/"),
            }
            for notification in bucket_notifications.bucket_notification_list(function=function)
        ],
        "stream_mappings": [
            {
                "mapping": mapping,
                "state": stream_sources.mapping_state(mapping=mapping),
                "lag": event_sources.mapping_lag(mapping=mapping),
            }
            for mapping in stream_sources.mapping_list(function=function)
        ],
        "bucket_form": bucket_form
        or forms.BucketNotificationForm(aliases=[alias.name for alias in selectors.alias_list(function=function)]),
        "url_form": new_form
        or forms.FunctionUrlForm(
            aliases=free, latest="" not in served, initial={"auth_type": "NONE", "invoke_mode": "BUFFERED"}
        ),
        "can_add_url": "" not in served or bool(free),
    }


@console_page
@require_POST
def function_url_create(request: SignedInRequest, name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    form = forms.FunctionUrlForm(
        request.POST, aliases=[alias.name for alias in selectors.alias_list(function=function)]
    )
    if form.is_valid():
        created = _attempt(
            form,
            lambda: http_triggers.function_url_create(
                function=function,
                qualifier=form.cleaned_data["qualifier"],
                auth_type=form.cleaned_data["auth_type"],
                invoke_mode=form.cleaned_data["invoke_mode"],
                cors=form.cors(),
            ),
            fallback="qualifier",
        )
        if created is not _FAILED:
            return redirect("function_triggers", name=function.name)
    return _tab(request, function, "triggers", _triggers_context(request, function, new_form=form), status=400)


@console_page
@require_POST
def function_url_update(request: SignedInRequest, name: str, url_id: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    url = http_triggers.function_url_by_id(function=function, url_id=url_id)
    form = forms.FunctionUrlForm(request.POST, auto_id=f"url-{url.url_id}-%s")
    if form.is_valid():
        changes = {key: form.cleaned_data[key] for key in ("auth_type", "invoke_mode")} | {"cors": form.cors()}
        if _attempt(form, lambda: http_triggers.function_url_update(url=url, **changes)) is not _FAILED:
            return redirect("function_triggers", name=function.name)
    context = _triggers_context(request, function, edited=(url.url_id, form))
    return _tab(request, function, "triggers", context, status=400)


@console_page
@require_POST
def function_url_delete(request: SignedInRequest, name: str, url_id: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    http_triggers.function_url_delete(url=http_triggers.function_url_by_id(function=function, url_id=url_id))
    return redirect("function_triggers", name=function.name)


@console_page
@require_POST
def schedule_create(request: SignedInRequest, name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    form = forms.ScheduleForm(request.POST, aliases=[alias.name for alias in selectors.alias_list(function=function)])
    if form.is_valid():
        fields = {key: form.cleaned_data[key] for key in ("name", "expression", "qualifier", "input", "grace_s")}
        create = functools.partial(
            schedules.schedule_create, function=function, timezone_name=form.cleaned_data["timezone"], **fields
        )
        if _attempt(form, create, fallback="expression") is not _FAILED:
            return redirect(reverse("function_triggers", args=[function.name]) + "#schedules")
    context = _triggers_context(request, function, schedule_form=form)
    return _tab(request, function, "triggers", context, status=400)


@console_page
@require_POST
def schedule_toggle(request: SignedInRequest, name: str, schedule: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    found = schedules.schedule_get(function=function, name=schedule)
    try:
        schedules.schedule_update(schedule=found, enabled=not found.enabled)
    except ServiceError as error:  # enabling one that never fires again (an at() past)
        messages.error(request, f"{found.name}: {error.message}")
    return redirect(reverse("function_triggers", args=[function.name]) + "#schedules")


@console_page
@require_POST
def schedule_delete(request: SignedInRequest, name: str, schedule: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    schedules.schedule_delete(schedule=schedules.schedule_get(function=function, name=schedule))
    return redirect(reverse("function_triggers", args=[function.name]) + "#schedules")


@console_page
@require_POST
def bucket_notification_create(request: SignedInRequest, name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    aliases = [alias.name for alias in selectors.alias_list(function=function)]
    form = forms.BucketNotificationForm(request.POST, aliases=aliases)
    if form.is_valid():
        create = functools.partial(
            bucket_notifications.bucket_notification_create, function=function, **form.settings()
        )
        created = _attempt(form, create, fallback="bucket")
        if created is not _FAILED:
            notification, token = created
            if token:
                messages.success(
                    request, f"{notification.name}: the store sends 'Authorization: Bearer {token}' (shown only now)."
                )
            return redirect(reverse("function_triggers", args=[function.name]) + "#bucket-notifications")
    context = _triggers_context(request, function, bucket_form=form)
    return _tab(request, function, "triggers", context, status=400)


@console_page
@require_POST
def bucket_notification_toggle(request: SignedInRequest, name: str, notification: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    found = bucket_notifications.bucket_notification_get(function=function, name=notification)
    try:
        bucket_notifications.bucket_notification_update(notification=found, enabled=not found.enabled)
    except ServiceError as error:  # its alias since deleted, say
        messages.error(request, f"{found.name}: {error.message}")
    return redirect(reverse("function_triggers", args=[function.name]) + "#bucket-notifications")


@console_page
@require_POST
def bucket_notification_delete(request: SignedInRequest, name: str, notification: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    found = bucket_notifications.bucket_notification_get(function=function, name=notification)
    bucket_notifications.bucket_notification_delete(notification=found)
    return redirect(reverse("function_triggers", args=[function.name]) + "#bucket-notifications")


# ---- Invocations tab and page -----------------------------------------------------------------------------------


def _with_colours(invocations: list[Invocation]) -> list[Invocation]:
    for invocation in invocations:
        invocation.status_colour = InvocationStatus(invocation.status).colour  # type: ignore[attr-defined]
    return invocations


def _invocations_filtered(function: Function, form: forms.InvocationFilterForm, owner: User) -> QuerySet[Invocation]:
    data = form.cleaned_data if form.is_valid() else {}
    since = timezone.now() - timedelta(hours=forms.TIME_RANGES[data["since"]]) if data.get("since") else None
    return selectors.invocation_list(
        owner=owner,
        function_name=function.name,
        status=data.get("status", ""),
        is_cold=form.is_cold() if data else None,
        executed_version=data.get("version", ""),
        since=since,
    )


@console_page
def function_invocations(request: SignedInRequest, name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    form = forms.InvocationFilterForm(request.GET)
    page = _page(request, _invocations_filtered(function, form, request.user))
    context = {"filter_form": form, "invocations": _with_colours(page.items), "page": page}
    return _tab(request, function, "invocations", context)


@console_page
def invocation_row(request: SignedInRequest, invocation_id: str) -> HttpResponse:
    """One row of the Invocations tab; it polls itself every second until the invocation is terminal."""
    invocation = selectors.invocation_get(owner=request.user, invocation_id=invocation_id)
    return render(request, "functions_app/_invocation_row.html", {"invocation": _with_colours([invocation])[0]})


def _timeline(invocation: Invocation) -> list[dict[str, Any]]:
    """The phases of ``TIMELINE_PHASES`` that happened, each with its share of the whole (at least a sliver)."""
    spent: list[tuple[str, float | None, str]] = [
        (label, getattr(invocation, field), colour) for label, field, colour in TIMELINE_PHASES
    ]
    phases = [(label, ms, colour) for label, ms, colour in spent if ms]
    total = sum(ms for _, ms, _ in phases) or 1.0
    return [
        {"label": label, "ms": ms, "colour": colour, "percent": max(ms / total * 100, 0.5)}
        for label, ms, colour in phases
    ]


def _invocation_context(invocation: Invocation) -> dict[str, Any]:
    return {
        "invocation": _with_colours([invocation])[0],
        "timeline": _timeline(invocation),
        "payload_pretty": _pretty_json(invocation.payload),
        "result_pretty": _pretty_json(invocation.result),
    }


@console_page
def invocation_detail(request: SignedInRequest, invocation_id: str) -> HttpResponse:
    invocation = selectors.invocation_get(owner=request.user, invocation_id=invocation_id)
    template = "functions_app/_invocation_body.html" if _is_htmx(request) else "functions_app/invocation_detail.html"
    return render(request, template, _invocation_context(invocation))


# ---- Configuration tab ------------------------------------------------------------------------------------------


def _configuration_form(function: Function, data: Any = None) -> forms.FunctionConfigurationForm:
    fields: tuple[str, ...] = (
        "description",
        "handler",
        "memory_mb",
        "timeout_s",
        "ephemeral_storage_mb",
        "reserved_concurrency",
        "network_enabled",
        "max_retry_attempts",
        "max_event_age_s",
        "on_success_destination",
        "on_failure_destination",
    )
    initial = {field: getattr(function, field) for field in fields} | {"revision_id": str(function.revision_id)}
    return forms.FunctionConfigurationForm(data, initial=initial, environment_keys=function.environment_keys)


@console_page
def function_configuration(request: SignedInRequest, name: str) -> HttpResponse:
    function = selectors.function_get(owner=request.user, name=name)
    form = _configuration_form(function, request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        updated = _attempt(
            form,
            lambda: services.function_update_configuration(
                function=function,
                revision_id=data["revision_id"] or None,
                environment=services.environment_edited(
                    function=function, remove=data["env_remove"], changes=data["environment"]
                ),
                **form.config(),
            ),
        )
        if updated is not _FAILED:
            return redirect(f"{reverse('function_configuration', args=[function.name])}?saved=1")
    return _tab(request, function, "configuration", {"form": form, "saved": "saved" in request.GET})


@console_page
@require_POST
def function_delete(request: SignedInRequest, name: str) -> HttpResponse:
    services.function_delete(function=selectors.function_get(owner=request.user, name=name))
    messages.success(request, f"Deleted {name} with its versions, aliases and invocations.")
    return _back(request, reverse("function_list"))


# ---- dead letters -----------------------------------------------------------------------------------------------


@console_page
def dead_letter_list(request: SignedInRequest) -> HttpResponse:
    form = forms.DeadLetterFilterForm(request.GET)
    filters = form.cleaned_data if form.is_valid() else {}
    letters = selectors.dead_letter_list(
        owner=request.user,
        function_name=filters.get("function", "").strip(),
        condition=filters.get("condition", ""),
        replayed=form.is_replayed() if filters else None,
    )
    page = _page(request, letters)
    context = {"letters": page.items, "page": page, "filter_form": form, "filtered": any(filters.values())}
    return render(request, "functions_app/dead_letters.html", context)


@console_page
@require_POST
def dead_letter_replay_view(request: SignedInRequest, letter_id: int) -> HttpResponse:
    letter: DeadLetter = selectors.dead_letter_get(owner=request.user, pk=letter_id)
    replayed = dead_letter_replay(dead_letter=letter)
    return redirect("invocation_detail", invocation_id=replayed.pk)


@console_page
@require_POST
def dead_letter_delete_view(request: SignedInRequest, letter_id: int) -> HttpResponse:
    dead_letter_delete(dead_letter=selectors.dead_letter_get(owner=request.user, pk=letter_id))
    return _back(request, reverse("dead_letter_list"))


# ---- account: password and API token ----------------------------------------------------------------------------


@console_page
def account(request: SignedInRequest) -> HttpResponse:
    return _account_page(request, forms.ApiKeyForm())


def _account_page(
    request: SignedInRequest,
    key_form: forms.ApiKeyForm,
    new_key: str | None = None,
    status: int = 200,
    access_key_form: forms.AccessKeyForm | None = None,
    new_access_key: tuple[Any, str] | None = None,
) -> HttpResponse:
    context = {
        "api_keys": accounts.api_key_list(owner=request.user)[: accounts.KEYS_PER_USER_MAX * 2],
        "key_form": key_form,
        "new_key": new_key,
        "access_keys": access_keys.access_key_list(owner=request.user)[: access_keys.ACCESS_KEYS_PER_USER_MAX * 3],
        "access_key_form": access_key_form or forms.AccessKeyForm(),
        "rotate_form": forms.AccessKeyRotateForm(),
        "new_access_key": new_access_key,
        "account_id": access_keys.account_id_of(request.user),
        "region": settings.AWS_REGION,
        "lambda_endpoint": request.build_absolute_uri("/").rstrip("/"),
        "api_url": request.build_absolute_uri(reverse("api-functions")),
        "metrics_url": request.build_absolute_uri(reverse("metrics")),
        "metrics_token_set": bool(settings.METRICS_TOKEN),
    }
    return render(request, "account.html", context, status=status)


@console_page
@require_POST
def api_key_create(request: SignedInRequest) -> HttpResponse:
    """Make a key and show it on this page, this once (it is stored as a hash: no later page can show it)."""
    form = forms.ApiKeyForm(request.POST)
    if form.is_valid():
        created = _attempt(
            form,
            lambda: accounts.api_key_create(owner=request.user, name=form.cleaned_data["name"], **form.expiry()),
            fallback="name",
        )
        if created is not _FAILED:
            return _account_page(request, forms.ApiKeyForm(), new_key=created[1])
    return _account_page(request, form, status=400)


@console_page
@require_POST
def api_key_revoke(request: SignedInRequest, key_id: int) -> HttpResponse:
    api_key = accounts.api_key_revoke(api_key=accounts.api_key_get(owner=request.user, pk=key_id))
    messages.success(request, f"The key {api_key} is revoked: it no longer works.")
    return redirect("account")


@console_page
@require_POST
def access_key_create_view(request: SignedInRequest) -> HttpResponse:
    """Make an access key and show its secret on this page, this once."""
    form = forms.AccessKeyForm(request.POST)
    if form.is_valid():
        created = _attempt(
            form, lambda: access_keys.access_key_create(owner=request.user, name=form.cleaned_data["name"]), "name"
        )
        if created is not _FAILED:
            return _account_page(request, forms.ApiKeyForm(), new_access_key=created)
    return _account_page(request, forms.ApiKeyForm(), access_key_form=form, status=400)


@console_page
@require_POST
def access_key_rotate_view(request: SignedInRequest, access_key_id: str) -> HttpResponse:
    key = access_keys.access_key_get(owner=request.user, access_key_id=access_key_id)
    form = forms.AccessKeyRotateForm(request.POST)
    grace_s = form.cleaned_data["grace_s"] if form.is_valid() else 0
    try:
        rotated = access_keys.access_key_rotate(access_key=key, grace_s=grace_s)
    except ServiceError as error:
        messages.error(request, error.message)
        return redirect("account")
    return _account_page(request, forms.ApiKeyForm(), new_access_key=rotated)


@console_page
@require_POST
def access_key_revoke_view(request: SignedInRequest, access_key_id: str) -> HttpResponse:
    key = access_keys.access_key_get(owner=request.user, access_key_id=access_key_id)
    access_keys.access_key_revoke(access_key=key)
    messages.success(request, f"The access key {key} is revoked: it no longer works.")
    return redirect("account")


class PasswordChange(SuccessMessageMixin, PasswordChangeView):
    """Django's password change (the old password, then the new one twice), for any signed-in user."""

    template_name = "registration/password_change_form.html"
    success_url = reverse_lazy("account")
    success_message = "Your password is changed."

"""Forms of the browser console. They only parse text into Python values; every rule on those values lives in
``functions_app.services`` and comes back as a ``ServiceError`` whose ``details`` name the fields (see
``form_add_service_error``)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, cast

from django import forms
from django.utils import timezone

from console.exceptions import ServiceError
from console.json_api import json_strict_loads
from functions_app.models import (
    DEAD_LETTER,
    EVENT_AGE_MAX_S,
    LATEST,
    RETRIES_MAX,
    BucketNotificationMode,
    DeadLetterCondition,
    FunctionUrl,
    FunctionUrlAuth,
    InvocationStatus,
    InvokeMode,
    Runtime,
)

DEFAULT_HANDLER = "lambda_function.lambda_handler"
DEFAULT_SOURCE = (
    "import json\n\n\ndef lambda_handler(event, context):\n"
    '    print("event:", json.dumps(event))\n'
    '    return {"statusCode": 200, "body": "Hello from Ephemera"}\n'
)
# Service detail keys that name a differently called form field.
_FIELD_ALIASES = {
    "zip_base64": "zip_file",
    "files": "source",
    "code": "source",
    "version": "version",
    "prefix": "key_prefix",
    "suffix": "key_suffix",
}
TIME_RANGES = {"1h": 1, "24h": 24, "7d": 24 * 7, "30d": 24 * 30}


def form_add_service_error(form: forms.Form, error: ServiceError, fallback: str | dict[str, str] | None = None) -> None:
    """Put a service's complaint next to the field it names; what names no field goes to ``fallback`` (a field,
    or a field per error type with "*" for the rest) or else to the form's top-level errors, so that nothing is
    lost and nothing becomes a 500."""
    if isinstance(fallback, dict):
        fallback = fallback.get(error.type, fallback.get("*"))
    placed = False
    if isinstance(error.details, dict):
        for key, messages in error.details.items():
            field = _FIELD_ALIASES.get(key, key.removeprefix("cors."))
            if field in form.fields:
                for message in messages if isinstance(messages, list) else [messages]:
                    form.add_error(field, str(message))
                placed = True
    if not placed:
        form.add_error(fallback if fallback in form.fields else None, error.message)


def environment_parse(text: str) -> dict[str, str]:
    """`NAME=value` lines (blank lines and `#` comments skipped) into a map; the service checks the names."""
    variables: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise forms.ValidationError(f"Line {number}: expected NAME=value.")
        variables[name.strip()] = value
    return variables


class _IntegerOrBlank(forms.IntegerField):
    """An integer field that leaves range checks to the service, so the console and the API say the same."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("widget", forms.NumberInput(attrs={"step": 1}))
        super().__init__(**kwargs)


class _ConfigFields(forms.Form):
    description = forms.CharField(required=False, widget=forms.TextInput(attrs={"size": 60}))
    handler = forms.CharField(initial=DEFAULT_HANDLER, help_text="module.function")
    memory_mb = _IntegerOrBlank(label="Memory (MB)", initial=128, help_text="128 to 10240")
    timeout_s = _IntegerOrBlank(label="Timeout (s)", initial=3, help_text="1 to 900")
    ephemeral_storage_mb = _IntegerOrBlank(
        required=False, label="Ephemeral storage /tmp (MB)", initial=512, help_text="512 to 10240; disk, not memory"
    )
    reserved_concurrency = _IntegerOrBlank(
        required=False, label="Reserved concurrency", help_text="Blank: unreserved; 0 throttles every invocation."
    )
    network_enabled = forms.BooleanField(required=False, label="Allow outbound network")
    max_retry_attempts = _IntegerOrBlank(label="Async max retries", initial=RETRIES_MAX, help_text="0 to 2")
    max_event_age_s = _IntegerOrBlank(label="Async max event age (s)", initial=EVENT_AGE_MAX_S, help_text="60 to 21600")
    on_success_destination = forms.CharField(
        required=False, label="On success", help_text='Blank, "dead-letter" or "function:<name>"'
    )
    on_failure_destination = forms.CharField(
        required=False, label="On failure", initial=DEAD_LETTER, help_text='Blank, "dead-letter" or "function:<name>"'
    )
    environment = forms.CharField(
        required=False,
        label="Set environment variables",
        widget=forms.Textarea(attrs={"rows": 3, "autocomplete": "off", "spellcheck": "false"}),
        help_text="NAME=value, one per line. Values are write-only: they are never shown again.",
    )

    def clean_environment(self) -> dict[str, str]:
        return environment_parse(self.cleaned_data.get("environment", ""))

    def config(self) -> dict[str, Any]:
        """The cleaned values as the service's keyword arguments (environment handled by the caller)."""
        names = set(_ConfigFields.base_fields) - {"environment"}
        config = {name: value for name, value in self.cleaned_data.items() if name in names}
        if config.get("ephemeral_storage_mb") is None:
            config.pop("ephemeral_storage_mb", None)  # blank: as it is (512 MB for a new function)
        return config


class _CodeFields(forms.Form):
    source = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 18, "class": "code-editor", "spellcheck": "false"}),
        help_text="The handler's module. Ignored when a zip is uploaded.",
    )
    zip_file = forms.FileField(required=False, label="Or upload a .zip")

    def code_bytes(self) -> bytes | None:
        upload = self.cleaned_data.get("zip_file")
        return upload.read() if upload else None


class FunctionCreateForm(_CodeFields, _ConfigFields):
    name = forms.CharField(max_length=64, help_text="Letters, digits, hyphens and underscores.")
    field_order = ["name", "description", "handler", "source", "zip_file"]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if not cleaned.get("zip_file") and not (cleaned.get("source") or "").strip():
            self.add_error("source", "Write the handler's code or upload a zip.")
        return cleaned


class FunctionConfigurationForm(_ConfigFields):
    revision_id = forms.CharField(widget=forms.HiddenInput, required=False)
    env_remove = forms.MultipleChoiceField(
        required=False, label="Remove variables", widget=forms.CheckboxSelectMultiple
    )

    def __init__(self, *args: Any, environment_keys: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["env_remove"]).choices = [(name, name) for name in environment_keys]


class CodeForm(_CodeFields):
    revision_id = forms.CharField(widget=forms.HiddenInput, required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["source"].help_text = "The opened file. Ignored when a zip is uploaded."

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if not cleaned.get("zip_file") and not (cleaned.get("source") or "").strip():
            self.add_error("source", "The code cannot be empty.")
        return cleaned


def _json_value(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError as exc:
        raise forms.ValidationError(f"Not valid JSON: {exc}") from None


class TestEventForm(forms.Form):
    __test__ = False  # not a pytest test class despite the name

    name = forms.CharField(max_length=25, help_text="Letters, digits, hyphens and underscores.")
    event = forms.CharField(
        strip=False, initial="{}", widget=forms.Textarea(attrs={"rows": 8, "class": "json", "spellcheck": "false"})
    )

    def clean_event(self) -> Any:
        return _json_value(self.cleaned_data["event"])


def qualifier_choices(*, versions: Any, aliases: Any) -> list[tuple[str, str]]:
    """What an invoke can name: `$LATEST`, each published version and each alias (with where it points)."""
    choices = [(LATEST, f"{LATEST} (unpublished)")]
    choices += [(str(version.number), f"Version {version.number}") for version in versions]
    for alias in aliases:
        label = f"Alias {alias.name} → version {alias.version.number}"
        if alias.additional_version:
            label += f", {alias.additional_weight:.0%} to version {alias.additional_version.number}"
        choices.append((alias.name, label))
    return choices


class InvokeForm(forms.Form):
    event = forms.CharField(
        strip=False,
        required=False,
        initial="{}",
        widget=forms.Textarea(attrs={"rows": 8, "class": "json", "spellcheck": "false"}),
    )
    qualifier = forms.ChoiceField(label="Version or alias", initial=LATEST, required=False)  # blank: $LATEST

    def __init__(self, *args: Any, qualifiers: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["qualifier"]).choices = qualifiers

    def clean_event(self) -> str:
        text = self.cleaned_data.get("event") or "{}"
        _json_value(text)
        return text


class PublishForm(forms.Form):
    description = forms.CharField(required=False, max_length=256)


class AliasForm(forms.Form):
    name = forms.CharField(max_length=128)
    description = forms.CharField(required=False, max_length=256)
    version = forms.IntegerField(min_value=1)
    additional_version = forms.IntegerField(required=False, min_value=1, label="Canary version")
    additional_weight = forms.FloatField(required=False, label="Canary weight", help_text="0.0 to 1.0")


class FunctionUrlForm(forms.Form):
    """A function URL: what it serves (on creation only), who may call it, and its CORS configuration."""

    qualifier = forms.ChoiceField(required=False, label="Serves", choices=[("", "$LATEST")])
    auth_type = forms.ChoiceField(
        choices=FunctionUrlAuth.choices,
        label="Auth",
        help_text="Public, or an API key of yours in Authorization: Token <key> (stripped before the function).",
    )
    invoke_mode = forms.ChoiceField(
        choices=InvokeMode.choices,
        label="Invoke mode",
        help_text="Streamed: a handler that yields sends each item to the client as it is produced.",
    )
    allow_origins = forms.CharField(
        required=False,
        label="CORS allowed origins",
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "https://app.example.com"}),
        help_text="One per line (scheme://host[:port]) or *. None: no CORS, the function answers OPTIONS itself.",
    )
    allow_methods = forms.MultipleChoiceField(
        required=False,
        label="CORS methods",
        choices=[("*", "any (*)"), *((method, method) for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"))],
        widget=forms.CheckboxSelectMultiple,
    )
    allow_headers = forms.CharField(required=False, label="CORS allowed headers", help_text="Comma-separated.")
    expose_headers = forms.CharField(required=False, label="CORS exposed headers", help_text="Comma-separated.")
    max_age = forms.IntegerField(required=False, min_value=0, label="CORS max age (s)")
    allow_credentials = forms.BooleanField(required=False, label="CORS allows credentials")

    def __init__(self, *args: Any, aliases: list[str] | None = None, latest: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [("", "$LATEST")] if latest else []
        choices += [(name, f"alias {name}") for name in aliases or []]
        cast(forms.ChoiceField, self.fields["qualifier"]).choices = choices

    @classmethod
    def initial_of(cls, url: FunctionUrl) -> dict[str, Any]:
        cors = url.cors or {}
        return {
            "auth_type": url.auth_type,
            "invoke_mode": url.invoke_mode,
            "allow_origins": "\n".join(cors.get("allow_origins", [])),
            "allow_methods": cors.get("allow_methods", []),
            "allow_headers": ", ".join(cors.get("allow_headers", [])),
            "expose_headers": ", ".join(cors.get("expose_headers", [])),
            "max_age": cors.get("max_age") or None,
            "allow_credentials": cors.get("allow_credentials", False),
        }

    def cors(self) -> dict[str, Any]:
        """The CORS configuration the form describes ({} without origins: no CORS)."""
        data = self.cleaned_data
        origins = [line.strip() for line in data["allow_origins"].splitlines() if line.strip()]
        if not origins:
            return {}
        return {
            "allow_origins": origins,
            "allow_methods": data["allow_methods"],
            "allow_headers": _comma_list(data["allow_headers"]),
            "expose_headers": _comma_list(data["expose_headers"]),
            "max_age": data["max_age"] or 0,
            "allow_credentials": data["allow_credentials"],
        }


class ScheduleForm(forms.Form):
    """A new schedule: its name, expression and zone, what it runs, and its event."""

    name = forms.CharField(max_length=64, help_text="Letters, digits, '-', '_' or '.'.")
    expression = forms.CharField(
        max_length=256,
        widget=forms.TextInput(attrs={"placeholder": "rate(5 minutes)", "spellcheck": "false", "autocomplete": "off"}),
        help_text="rate(5 minutes) · cron(0 12 * * ? *) (day-of-week 1-7 = SUN-SAT) · at(2027-01-31T09:30:00)",
    )
    timezone = forms.CharField(max_length=64, initial="UTC", label="Time zone", help_text="IANA: Europe/Paris…")
    qualifier = forms.ChoiceField(required=False, label="Runs", choices=[("", "$LATEST")])
    input = forms.CharField(
        required=False,
        label="Event (JSON)",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "Empty: EventBridge's Scheduled Event"}),
    )
    grace_s = forms.IntegerField(
        min_value=1,
        max_value=86_400,
        initial=60,
        label="Grace (s)",
        help_text="A tick missed while the platform was down still fires this late; older ones are skipped.",
    )

    def __init__(self, *args: Any, aliases: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [("", "$LATEST"), *((name, f"alias {name}") for name in aliases or [])]
        cast(forms.ChoiceField, self.fields["qualifier"]).choices = choices

    def clean_input(self) -> Any:
        text = self.cleaned_data["input"].strip()
        if not text:
            return None
        try:
            return json_strict_loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Not JSON: {exc}") from None
        except RecursionError:
            raise forms.ValidationError("Not JSON this program can read: nested too deeply.") from None


BUCKET_EVENT_CHOICES = [
    ("s3:ObjectCreated:*", "Objects created"),
    ("s3:ObjectRemoved:*", "Objects removed"),
]


class BucketNotificationForm(forms.Form):
    """A new bucket notification: where the events come from, which ones, and what they run."""

    name = forms.CharField(max_length=64, help_text="Letters, digits, '-', '_' or '.'.")
    mode = forms.ChoiceField(
        choices=BucketNotificationMode.choices,
        initial=BucketNotificationMode.WEBHOOK,
        help_text="Webhook: MinIO, Ceph RGW and other stores post their events. Poll: the platform lists the bucket.",
    )
    bucket = forms.CharField(max_length=63)
    events = forms.MultipleChoiceField(
        choices=BUCKET_EVENT_CHOICES, initial=["s3:ObjectCreated:*"], widget=forms.CheckboxSelectMultiple
    )
    # Not "prefix": a form's own attribute (the prefix of its fields' names).
    key_prefix = forms.CharField(
        max_length=1024, required=False, label="Key prefix", widget=forms.TextInput(attrs={"placeholder": "in/"})
    )
    key_suffix = forms.CharField(
        max_length=1024, required=False, label="Key suffix", widget=forms.TextInput(attrs={"placeholder": ".csv"})
    )
    qualifier = forms.ChoiceField(required=False, label="Runs", choices=[("", "$LATEST")])
    endpoint_url = forms.CharField(
        max_length=512,
        required=False,
        label="Endpoint (poll)",
        widget=forms.TextInput(attrs={"placeholder": "https://minio.example.com:9000 (empty: AWS S3)"}),
    )
    region = forms.CharField(max_length=32, initial="us-east-1", label="Region (poll)")
    access_key_id = forms.CharField(max_length=128, required=False, label="Access key id (poll)")
    secret_access_key = forms.CharField(
        max_length=256,
        required=False,
        label="Secret access key (poll)",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted; never shown again.",
    )
    poll_interval_s = forms.IntegerField(min_value=1, max_value=3600, initial=10, label="Poll every (s)")

    def __init__(self, *args: Any, aliases: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [("", "$LATEST"), *((name, f"alias {name}") for name in aliases or [])]
        cast(forms.ChoiceField, self.fields["qualifier"]).choices = choices

    def settings(self) -> dict[str, Any]:
        """The cleaned data as the service's arguments."""
        data = dict(self.cleaned_data)
        data["prefix"], data["suffix"] = data.pop("key_prefix"), data.pop("key_suffix")
        return data


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


class AliasUpdateForm(AliasForm):
    revision_id = forms.CharField(widget=forms.HiddenInput, required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["name"].required = False


def _yes_no(text: str) -> bool | None:
    return {"true": True, "false": False}.get(text)


class FunctionFilterForm(forms.Form):
    q = forms.CharField(
        required=False,
        max_length=64,
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Search by name or description"}),
    )
    runtime = forms.ChoiceField(required=False, choices=[("", "Any runtime"), *Runtime.choices])


class DeadLetterFilterForm(forms.Form):
    function = forms.CharField(
        required=False, max_length=64, widget=forms.TextInput(attrs={"type": "search", "placeholder": "Function name"})
    )
    condition = forms.ChoiceField(required=False, choices=[("", "Any condition"), *DeadLetterCondition.choices])
    replayed = forms.ChoiceField(
        required=False, choices=[("", "Replayed or not"), ("false", "Not replayed"), ("true", "Replayed")]
    )

    def is_replayed(self) -> bool | None:
        return _yes_no(self.cleaned_data.get("replayed", ""))


class InvocationFilterForm(forms.Form):
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *InvocationStatus.choices])
    cold = forms.ChoiceField(required=False, choices=[("", "Cold or warm"), ("true", "Cold"), ("false", "Warm")])
    version = forms.CharField(required=False, max_length=16, help_text="$LATEST or a number")
    since = forms.ChoiceField(
        required=False, choices=[("", "Any time"), *((key, f"Last {key}") for key in TIME_RANGES)]
    )

    def is_cold(self) -> bool | None:
        return _yes_no(self.cleaned_data.get("cold", ""))


API_KEY_EXPIRIES = [("", "Never"), ("30", "In 30 days"), ("90", "In 90 days"), ("365", "In a year")]


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=64, initial="", help_text="What the key is for, e.g. “laptop” or “CI”.")
    expires = forms.ChoiceField(choices=API_KEY_EXPIRIES, required=False, label="Expires")

    def expiry(self) -> dict[str, Any]:
        days = self.cleaned_data.get("expires")
        return {"expires_at": timezone.now() + timedelta(days=int(days))} if days else {}


class AccessKeyForm(forms.Form):
    name = forms.CharField(max_length=64, initial="", help_text="What the key is for, e.g. “laptop” or “terraform”.")


ROTATION_GRACES = [
    ("0", "at once"),
    ("3600", "in an hour"),
    ("86400", "in a day"),
    ("604800", "in a week"),
]


class AccessKeyRotateForm(forms.Form):
    grace_s = forms.TypedChoiceField(choices=ROTATION_GRACES, coerce=int, label="The old key stops working")


class SamImportForm(forms.Form):
    upload = forms.FileField(
        label="Template or project",
        help_text="template.yaml (code inline), or a zip of the project: template.yaml "
        "at its top, the CodeUri folders beside it.",
    )
    stack_name = forms.CharField(
        max_length=128, initial="sam", help_text="Names the HTTP API of the template's routes."
    )
    dry_run = forms.BooleanField(required=False, label="Only check: change nothing")
    sqs_access_key_id = forms.CharField(
        required=False, max_length=128, label="SQS access key id", help_text="For SQS events: the queues' keys."
    )
    sqs_secret_access_key = forms.CharField(
        required=False, max_length=256, label="SQS secret access key", widget=forms.PasswordInput
    )
    sqs_endpoint_url = forms.CharField(
        required=False, max_length=512, label="SQS endpoint", help_text="Only for an SQS-API server not AWS's."
    )


class HttpApiForm(forms.Form):
    """An HTTP API: its name (on creation), description and definition as JSON text."""

    name = forms.CharField(max_length=128, required=False)
    description = forms.CharField(max_length=1024, required=False)
    definition = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 18, "class": "code", "spellcheck": "false"}),
        help_text="JSON: routes, stages, authorizers, cors, not_found (see the README).",
    )

    def clean_definition(self) -> Any:
        try:
            return json.loads(self.cleaned_data["definition"])
        except ValueError as exc:
            raise forms.ValidationError(f"Not JSON: {exc}") from None

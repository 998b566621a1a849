"""The console in a real browser: headless Chromium (Playwright) against a live server and a real worker.

Needs the system's Chromium at /usr/bin/chromium (Debian package ``chromium``); ``playwright install`` is not
used. Screenshots of the main pages go to var/test/screenshots/, or docs/screenshots/ with `make screenshots`.
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import Resolver404, resolve

from functions_app import http_apis, http_triggers, services
from functions_app.accept import invocation_accept
from functions_app.models import DeadLetter
from functions_app.services import CodeUpload
from metrics_app.models import Rollup
from metrics_app.tests.factories import finish

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# `make screenshots` writes them into docs/screenshots (what the README shows); a plain test run keeps them under
# var/, so running the suite never changes tracked files.
SCREENSHOTS = Path(os.environ.get("EPHEMERA_SCREENSHOTS_DIR") or settings.VAR_DIR / "screenshots")
# Generous because two cores are shared with other test runs; these bound waits, they do not measure anything.
WAIT_MS = 60_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs the system Chromium at {CHROMIUM}"),
]

HANDLER = """import os


def lambda_handler(event, context):
    print("greeting", event["name"])
    return {"message": f"{os.environ['GREETING']}, {event['name']}!"}
"""


FAILING = "def handler(event, context):\n    raise ValueError('always fails')\n"


def wait_for(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.1)


@pytest.fixture
def page(live_server, monkeypatch) -> Iterator:
    from playwright.sync_api import Route, sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
        context.set_default_timeout(WAIT_MS)
        # The console must work offline: any request that leaves the live server fails the test.
        outside: list[str] = []

        def refuse(route: Route) -> None:
            outside.append(route.request.url)
            route.abort()

        context.route(re.compile(r"^(?!" + re.escape(live_server.url) + ")"), refuse)
        yield context.new_page()
        browser.close()
    assert not outside, f"the console fetched from outside the server: {outside}"


def shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def reports_exist() -> bool:
    try:
        resolve("/reports/")
    except Resolver404:
        return False
    return True


def test_a_user_creates_tests_and_monitors_a_function_in_the_browser(page, live_server, user, make_function, worker):
    from playwright.sync_api import expect

    base = live_server.url
    page.goto(f"{base}/functions/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/functions/$"))
    shot(page, "01-sign-in")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "pw-for-tests-only")
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{base}/functions/")
    expect(page.locator("nav.topbar")).to_contain_text("alice")

    # Create a function in the editor: CodeMirror highlights Python, and a bad memory size is shown in place.
    page.click("a.button.primary")
    editor = page.locator(".CodeMirror")
    expect(editor).to_be_visible()
    expect(editor.locator(".cm-keyword").first).to_be_visible()
    page.fill("#id_name", "greeter")
    page.evaluate("source => document.querySelector('.CodeMirror').CodeMirror.setValue(source)", HANDLER)
    page.fill("#id_environment", "GREETING=Hello")
    page.fill("#id_memory_mb", "64")
    page.click("button:has-text('Create function')")
    expect(page.locator("#field-memory_mb .errorlist")).to_contain_text("128 to 10240")
    shot(page, "02-create-function-error")
    page.fill("#id_memory_mb", "256")
    page.evaluate("source => document.querySelector('.CodeMirror').CodeMirror.setValue(source)", HANDLER)
    page.click("button:has-text('Create function')")
    expect(page).to_have_url(f"{base}/functions/greeter/")
    expect(page.locator(".CodeMirror")).to_contain_text("lambda_handler")
    shot(page, "03-code-tab")

    # Save a test event, load it into the invoke box and invoke: result, log, duration and cold flag appear.
    page.click("nav.tabs >> text=Test")
    page.fill("#new_name", "ada")
    page.fill("#new_event", '{"name": "Ada"}')
    page.click("button:has-text('Save test event')")
    expect(page.locator("details.event summary")).to_contain_text("ada")
    page.select_option("#event-picker", "ada")
    expect(page.locator("#invoke-form #id_event")).to_have_value('{"name": "Ada"}')
    page.click("#invoke-form button[type=submit]")
    expect(page.locator("#result-status")).to_have_text("succeeded")
    expect(page.locator("#result-body")).to_contain_text('"message": "Hello, Ada!"')
    expect(page.locator("#result-log")).to_contain_text("greeting Ada")
    expect(page.locator("#result-cold")).to_be_visible()
    expect(page.locator("#result-duration")).to_contain_text("ms")
    shot(page, "04-test-tab-result")

    # The invocation's own page: status, timeline and log.
    page.click("#result-panel dd a")
    expect(page.locator("#invocation-body .badge").first).to_have_text("Succeeded")
    # A cold call goes through every phase, from the queue to the answer.
    expect(page.locator(".timeline .phase")).to_have_count(5)
    expect(page.locator("#invocation-log")).to_contain_text("greeting Ada")
    shot(page, "05-invocation")

    page.goto(f"{base}/functions/greeter/invocations/?status=succeeded")
    expect(page.locator("#invocations tbody tr")).to_have_count(1)
    shot(page, "06-invocations-tab")

    # Monitor draws the metrics engineer's figures with the vendored plotly.js, once beat has flushed metering,
    # and ends with the memory right-sizing of the one invocation so far.
    wait_for(lambda: Rollup.objects.filter(function_name="greeter").exists())
    page.goto(f"{base}/functions/greeter/monitor/?range=1h")
    expect(page.locator("#rightsizing-table tbody tr").first).to_be_visible()
    expect(page.locator("#plot-rightsizing .main-svg").first).to_be_visible()
    expect(page.locator(".plot .main-svg").first).to_be_visible()
    expect(page.locator("#plot-invocations .main-svg").first).to_be_visible()
    shot(page, "07-monitor-tab")

    page.click("nav.tabs >> text=Versions and aliases")
    page.click("button:has-text('Publish new version')")
    expect(page.locator("#versions tbody tr")).to_have_count(2)
    page.fill("#alias-form #id_name", "live")
    page.fill("#alias-form #id_version", "1")
    page.click("button:has-text('Create alias')")
    expect(page.locator("details.alias summary")).to_contain_text("live → version 1")
    shot(page, "08-versions-tab")

    # A published version's code opens read-only from the Versions tab.
    page.click("#versions a[aria-label='View the code of version 1']")
    expect(page).to_have_url(f"{base}/functions/greeter/versions/1/")
    expect(page.locator(".CodeMirror")).to_contain_text("lambda_handler")
    assert page.evaluate("document.querySelector('.CodeMirror').CodeMirror.getOption('readOnly')") is True
    shot(page, "13-version-code")

    # The Test tab invokes what is picked from $LATEST, the versions and the aliases.
    page.click("nav.tabs >> text=Test")
    expect(page.locator("#id_qualifier option")).to_have_count(3)  # $LATEST, version 1, alias live
    page.select_option("#id_qualifier", "live")
    page.click("#invoke-form button[type=submit]")
    expect(page.locator("#result-status")).to_have_text("succeeded")
    expect(page.locator("#result-version")).to_have_text("1")

    page.click("nav.tabs >> text=Configuration")
    expect(page.locator("code.env-name")).to_have_text("GREETING")
    expect(page.locator("body")).not_to_contain_text("Hello,")  # the value is write-only
    shot(page, "09-configuration-tab")

    # An async event that fails lands in the dead-letter inbox; replaying it is followed live on its page.
    flaky = make_function(name="flaky", code=CodeUpload(files={"app.py": FAILING}), max_retry_attempts=0)
    invocation_accept(owner=user, function=flaky, qualifier="", raw_payload=b'{"n": 1}', invocation_type="async")
    wait_for(lambda: DeadLetter.objects.filter(function=flaky).exists())
    make_function(name="new")  # a name the create page once took for itself
    page.goto(f"{base}/functions/")
    expect(page.locator("#functions tbody tr")).to_have_count(3)
    shot(page, "10-function-list")
    page.click("#functions a[href='/functions/new/']")
    expect(page.locator(".page-head h1")).to_have_text("new")
    expect(page.locator("nav.tabs a.active")).to_have_text("Code")

    # Deleting from the list asks first: dismissed, nothing happens; accepted, the function is gone.
    page.goto(f"{base}/functions/")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#functions button[aria-label='Delete new']")
    expect(page.locator("#functions tbody tr")).to_have_count(3)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#functions button[aria-label='Delete new']")
    expect(page.locator(".messages")).to_contain_text("Deleted new")
    expect(page.locator("#functions tbody tr")).to_have_count(2)
    page.click("nav.topbar >> text=Dead letters")
    expect(page.locator("#dead-letters tbody tr")).to_contain_text("Retries exhausted")
    shot(page, "11-dead-letters")
    page.click("#dead-letters button:has-text('Replay')")
    expect(page).to_have_url(re.compile(r"/invocations/[0-9a-f-]{36}/$"))
    expect(page.locator("#invocation-body [data-status]")).to_have_text("Failed")  # htmx polled it to the end
    expect(page.locator("#invocation-result")).to_contain_text("ValueError")

    if reports_exist():  # the metrics engineer's report page and its CSV download
        page.click("nav.topbar >> text=Reports")
        expect(page.locator("#report tbody")).to_contain_text("greeter")
        expect(page.locator("#plot-report .main-svg").first).to_be_visible()
        shot(page, "12-report")
        with page.expect_download() as download:
            page.locator("a[href*='csv' i], a:has-text('CSV')").first.click()
        rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
        assert len(rows) >= 2 and any("greeter" in cell for row in rows for cell in row)

    page.click("nav.topbar button:has-text('Sign out')")
    expect(page).to_have_url(f"{base}/login/")


def sign_in(page, base: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "pw-for-tests-only")
    page.click("button[type=submit]")


def test_a_user_makes_an_api_key_from_the_header_copies_it_and_it_is_not_shown_again(page, live_server, user):
    from playwright.sync_api import expect

    base = live_server.url
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    sign_in(page, base)
    page.click("nav.topbar #account-link")
    page.fill("#api-key-form #id_name", "laptop")
    page.select_option("#api-key-form #id_expires", "90")
    page.click("#api-key-form button[type=submit]")
    key = page.locator("#api-token").text_content().strip()
    assert key.startswith("eph_")
    page.click("#copy-token")
    expect(page.locator("#copy-token")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == key
    expect(page.locator("#api-keys")).to_contain_text("laptop")
    shot(page, "14-account")
    page.goto(f"{base}/account/")
    expect(page.locator("#api-token")).to_have_count(0)
    expect(page.locator("#api-keys")).to_contain_text(f"eph_{key[4:12]}_")


def test_a_user_makes_an_aws_access_key_copies_its_environment_and_imports_a_sam_template(
    page, live_server, user, tmp_path
):
    from playwright.sync_api import expect

    base = live_server.url
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    sign_in(page, base)
    page.goto(f"{base}/account/")
    expect(page.locator("#account-id")).to_have_text(f"{user.pk:012d}")
    page.fill("#access-key-form #id_name", "terraform")
    page.click("#access-key-form button[type=submit]")
    environment = page.locator("#access-key-env").text_content()
    assert f"export AWS_ENDPOINT_URL_LAMBDA={base}" in environment and "export AWS_SECRET_ACCESS_KEY=" in environment
    page.click("#copy-access-key")
    expect(page.locator("#copy-access-key")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == environment.strip()
    expect(page.locator("#access-keys")).to_contain_text("terraform")
    shot(page, "18-access-keys")
    page.goto(f"{base}/account/")
    expect(page.locator("#access-key-env")).to_have_count(0)

    template = tmp_path / "template.yaml"
    template.write_text(
        "Resources:\n  Ping:\n    Type: AWS::Serverless::Function\n    Properties:\n      Handler: index.handler\n"
        "      Runtime: python3.12\n      InlineCode: |\n        def handler(event, context):\n"
        "            return 'pong'\n      Events:\n        Every:\n          Type: Schedule\n"
        "          Properties:\n            Schedule: rate(1 hour)\n        Topic:\n          Type: SNS\n"
    )
    page.goto(f"{base}/functions/")
    page.click("#sam-import-link")
    page.set_input_files("#sam-import-form input[type=file]", str(template))
    page.click("#sam-import-form button[type=submit]")
    expect(page.locator("#sam-report")).to_contain_text("Ping")
    expect(page.locator("#sam-triggers")).to_contain_text("schedule Every (rate(1 hour)) → Ping")
    expect(page.locator("#sam-skipped")).to_contain_text("Ephemera has no SNS")
    shot(page, "19-sam-import")


# Labels of a drawn plotly chart that stick out of it, or sit on one another.
CHART_LABEL_PROBLEMS = """plot => {
  const box = plot.getBoundingClientRect();
  const selectors = {xtick: ".xtick text", ytick: ".ytick text", y2tick: ".y2tick text", xtitle: ".xtitle",
                     ytitle: ".ytitle", y2title: ".y2title", title: ".gtitle", legend: ".legendtext"};
  const labels = [];
  for (const [group, selector] of Object.entries(selectors)) {
    for (const element of plot.querySelectorAll(selector)) {
      const r = element.getBoundingClientRect();
      const tilted = (element.getAttribute("transform") || "").includes("rotate");
      if (r.width && r.height && element.textContent.trim()) labels.push({group, text: element.textContent, r, tilted});
    }
  }
  const problems = [];
  for (const a of labels) {
    if (a.r.left < box.left - 1 || a.r.right > box.right + 1 || a.r.top < box.top - 1 || a.r.bottom > box.bottom + 1)
      problems.push(`${a.group} "${a.text}" is cut off`);
  }
  const overlap = (a, b) => Math.min(a.r.right, b.r.right) - Math.max(a.r.left, b.r.left) > 1
    && Math.min(a.r.bottom, b.r.bottom) - Math.max(a.r.top, b.r.top) > 1;
  for (let i = 0; i < labels.length; i++) for (let j = i + 1; j < labels.length; j++) {
    const [a, b] = [labels[i], labels[j]];
    if (a.group === b.group && a.tilted && b.tilted) continue;  // tilted labels' boxes overlap where the text does not
    if (overlap(a, b)) problems.push(`${a.group} "${a.text}" overlaps ${b.group} "${b.text}"`);
  }
  return problems;
}"""
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1360, "height": 900}


def test_every_page_fits_a_phone_and_every_chart_shows_its_points_and_labels(page, live_server, user, make_function):
    from django.utils import timezone
    from playwright.sync_api import expect

    function = make_function(name="greeter", memory_mb=2048, description="Greets whoever it is given, politely.")
    services.version_publish(function=function)
    an_hour_ago = timezone.now() - timedelta(minutes=30)  # all the traffic in a single hour of the 24 h charts
    for n in range(5):
        last = finish(function, at=an_hour_ago, is_cold=n == 0, init_ms=30.0 if n == 0 else 0.0, peak_memory_mb=2.5)
    failed = finish(
        function, at=an_hour_ago, status="failed", error_type="ValueError", invocation_type="async", peak_memory_mb=2.5
    )
    DeadLetter.objects.create(
        owner=user, function=function, invocation=failed, condition="RetriesExhausted", request_payload="{}", attempts=3
    )
    http_triggers.function_url_create(function=function, auth_type="TOKEN", cors={"allow_origins": ["*"]})
    routes = [
        {
            "route_key": "GET /greetings/{name}/in/{language}",
            "function": "greeter",
            "throttle": {"rate": 5, "burst": 10},
        }
    ]
    http_apis.http_api_create(
        owner=user, name="greetings-api", definition={"routes": routes, "stages": [{"name": "production"}]}
    )
    base = live_server.url
    sign_in(page, base)
    pages = [
        "/functions/",
        "/functions/+new/",
        "/functions/greeter/",
        "/functions/greeter/test/",
        "/functions/greeter/monitor/",
        "/functions/greeter/versions/",
        "/functions/greeter/versions/1/",
        "/functions/greeter/triggers/",
        "/http-apis/",
        "/http-apis/greetings-api/",
        "/functions/greeter/invocations/",
        "/functions/greeter/configuration/",
        f"/invocations/{last.pk}/",
        "/dead-letters/",
        "/reports/",
        "/account/",
        "/functions/+import-sam/",
    ]
    for viewport in (DESKTOP, PHONE):
        page.set_viewport_size(viewport)
        for path in pages:
            page.goto(base + path)
            plots = page.locator(".plot")
            for index in range(plots.count()):
                expect(plots.nth(index).locator(".main-svg").first).to_be_visible()
                problems = plots.nth(index).evaluate(CHART_LABEL_PROBLEMS)
                assert problems == [], (viewport["width"], path, plots.nth(index).get_attribute("id"), problems)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= viewport["width"], f"{path} is {width} px wide at {viewport['width']} px"
            if path == "/functions/greeter/monitor/":
                assert page.locator("#plot-duration .scatterlayer .point").count() >= 3  # p50, p90, p99: one each
                expect(page.locator("#rightsizing")).to_contain_text("peak memory 2.5 MB (p99 ≤ 2.5 MB)")
                if viewport is PHONE:
                    shot(page, "15-monitor-phone")
            if viewport is PHONE and path in ("/functions/", f"/invocations/{last.pk}/"):
                shot(page, "16-function-list-phone" if path == "/functions/" else "17-invocation-phone")


def test_the_schedule_form_shows_the_next_ten_ticks_as_you_type_and_why_an_expression_is_wrong(
    page, live_server, user, make_function
):
    from playwright.sync_api import expect

    make_function()
    base = live_server.url
    sign_in(page, base)
    page.goto(f"{base}/functions/hello/triggers/")
    page.fill("#id_expression", "cron(0 9 ? * MON-FRI *)")
    page.fill("#id_timezone", "Europe/Paris")
    expect(page.locator("#schedule-preview-times li")).to_have_count(10)
    first = page.locator("#schedule-preview-times li").first.text_content()
    assert "09:00 Europe/Paris" in first and ("08:00 UTC" in first or "07:00 UTC" in first), first
    page.fill("#id_expression", "cron(0 9 * * * *)")
    expect(page.locator("#schedule-preview-note")).to_contain_text("Exactly one of day-of-month and day-of-week")
    expect(page.locator("#schedule-preview-times li")).to_have_count(0)
    page.fill("#id_expression", "rate(15 minutes)")
    page.fill("#id_name", "quarterly")
    page.click("#schedule-form button[type=submit]")
    expect(page.locator("#schedule-quarterly")).to_contain_text("enabled")
    shot(page, "17-schedules")
    page.click("#schedule-quarterly button:has-text('Disable')")
    expect(page.locator("#schedule-quarterly")).to_contain_text("disabled")

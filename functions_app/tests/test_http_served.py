"""HTTP endpoints against the real server `make run` starts: the README's worked example pasted as it is, and a
real WSGI application (Flask) packaged with a maintained Lambda adapter (apig-wsgi) served through an HTTP API
route and a function URL."""

from __future__ import annotations

import base64
import http.client
import importlib.util
import io
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from email.message import Message
from pathlib import Path

import pytest

from console.tests.test_standalone import (
    BASE_DIR,
    Output,
    free_port,
    read_until_running,
    start_platform,
    stop_platform,
)

# The platform these tests start is always the embedded one (start_platform drops DATABASE_URL and REDIS_URL): CI
# runs them once, not again in its PostgreSQL + Redis server run.
pytestmark = [pytest.mark.slow, pytest.mark.backend_free]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One platform for the module: its base URL and the API key its banner printed."""
    port = free_port()
    process = start_platform(tmp_path_factory.mktemp("served") / "var", port)
    try:
        banner = read_until_running(process, Output(process))
        token = re.search(r"API key:\s+(eph_\S+)", banner).group(1)
        yield f"http://127.0.0.1:{port}", token
    finally:
        stop_platform(process)


def readme_block(heading: str) -> str:
    """The first ```sh block after a heading of the README."""
    text = (BASE_DIR / "README.md").read_text()
    section = text[text.index(heading) :]
    return section.split("```sh\n", 1)[1].split("\n```", 1)[0]


def test_the_readmes_rest_api_example_runs_as_it_is_written(served, tmp_path):
    base, token = served
    script = readme_block("### A REST API, worked through").replace("http://127.0.0.1:8000", base)
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env={**os.environ, "TOKEN": token},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert re.fullmatch(rf"{base}/http/[a-z0-9]{{10}}/", lines[0]), lines
    assert json.loads(lines[1]) == {"id": "1", "name": "Tea", "price": 3.5}
    assert json.loads(lines[2]) == {"total": 12.75, "for": "ada"}
    assert lines[3:] == ["401", "403"]


FLASK_APP = """
from apig_wsgi import make_lambda_handler
from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/items/<int:item_id>")
def item(item_id):
    return jsonify(id=item_id, sort=request.args.get("sort"), agent=request.headers.get("User-Agent"))


@app.post("/echo")
def echo():
    response = jsonify(got=request.get_json(), path=request.path)
    response.set_cookie("seen", "yes")
    return response, 201


lambda_handler = make_lambda_handler(app)
"""

PACKAGES = ("flask", "werkzeug", "jinja2", "markupsafe", "itsdangerous", "click", "blinker", "apig_wsgi")


def flask_zip() -> bytes:
    """The app and its packages (as this venv holds them: pure Python, or built for the same Python 3.11)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("app.py", FLASK_APP)
        for name in PACKAGES:
            spec = importlib.util.find_spec(name)
            assert spec is not None and spec.submodule_search_locations, name
            root = Path(next(iter(spec.submodule_search_locations)))
            for path in root.rglob("*"):
                if path.is_file() and "__pycache__" not in path.parts:
                    archive.write(path, f"{name}/{path.relative_to(root)}")
    return buffer.getvalue()


def request(url: str, *, token: str = "", body: dict | None = None, method: str = "GET") -> tuple[int, Message, bytes]:
    headers = {"Authorization": f"Token {token}"} if token else {}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=60) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_a_flask_app_behind_apig_wsgi_serves_through_a_route_and_a_function_url(served):
    base, token = served
    code = base64.b64encode(flask_zip()).decode()
    created, _, body = request(
        f"{base}/api/v1/functions/",
        token=token,
        method="POST",
        body={"name": "flask-app", "handler": "app.lambda_handler", "memory_mb": 256, "code": {"zip_base64": code}},
    )
    assert created == 201, body
    definition = {"routes": [{"route_key": "ANY /{proxy+}", "function": "flask-app"}]}
    status, _, body = request(
        f"{base}/api/v1/http-apis/", token=token, method="POST", body={"name": "flask", "definition": definition}
    )
    assert status == 201, body
    stage = json.loads(body)["stages"][0]["url"]
    status, headers, body = request(f"{stage}items/42?sort=asc")
    assert status == 200, body
    item = json.loads(body)
    assert item["id"] == 42 and item["sort"] == "asc" and item["agent"].startswith("Python-urllib/")
    assert headers["Content-Type"] == "application/json"

    status, _, body = request(
        f"{base}/api/v1/functions/flask-app/url/", token=token, method="POST", body={"auth_type": "NONE"}
    )
    assert status == 201, body
    url = json.loads(body)["url"]
    status, headers, body = request(f"{url}echo", method="POST", body={"tea": 2})
    assert status == 201, body
    assert json.loads(body) == {"got": {"tea": 2}, "path": "/echo"}
    assert headers["Set-Cookie"].startswith("seen=yes")
    assert request(f"{url}missing")[0] == 404  # Flask's own 404, through the adapter


def url_path_of_new_function(
    served: tuple[str, str], name: str, source: str, *, timeout_s: int = 3, invoke_mode: str = "BUFFERED"
) -> str:
    """Create a function of ``source`` (app.py) and a public URL of it: the URL's path."""
    base, token = served
    function = {"name": name, "handler": "app.handler", "timeout_s": timeout_s, "code": {"files": {"app.py": source}}}
    status, _, body = request(f"{base}/api/v1/functions/", token=token, method="POST", body=function)
    assert status == 201, body
    url = {"auth_type": "NONE", "invoke_mode": invoke_mode}
    status, _, body = request(f"{base}/api/v1/functions/{name}/url/", token=token, method="POST", body=url)
    assert status == 201, body
    return urllib.parse.urlsplit(json.loads(body)["url"]).path


MIRROR = """
import base64

def handler(event, context):
    body = base64.b64decode(event["body"]) if event.get("isBase64Encoded") else event.get("body", "").encode()
    return {"statusCode": 200, "body": str(len(body)), "headers": {"X-Raw-Path": event["rawPath"]}}
"""


def test_a_chunked_body_arrives_whole_and_one_over_the_limit_is_refused(served):
    base = served[0]
    path = url_path_of_new_function(served, "sizes", MIRROR)
    connection = http.client.HTTPConnection(
        urllib.parse.urlsplit(base).hostname, urllib.parse.urlsplit(base).port, timeout=60
    )
    chunks = (b"x" * 1000 for _ in range(5))
    connection.request(
        "POST", f"{path}a%2Fb", body=chunks, encode_chunked=True, headers={"Content-Type": "application/octet-stream"}
    )
    answer = connection.getresponse()
    assert (answer.status, answer.read(), answer.getheader("X-Raw-Path")) == (200, b"5000", "/a%2Fb")
    too_large = (b"x" * 1024 * 1024 for _ in range(7))
    connection.request("POST", path, body=too_large, encode_chunked=True, headers={"Content-Type": "text/plain"})
    answer = connection.getresponse()
    assert answer.status == 413 and b"Request Entity Too Large" in answer.read()


def test_the_native_sync_invoke_is_answered_on_the_event_loop_as_the_rest_view_answers(served):
    base, token = served
    invoke = f"{base}/api/v1/functions/hello/invoke/"  # the seeded function
    status, headers, body = request(f"{invoke}?log=tail", token=token, method="POST", body={"name": "Ada"})
    assert status == 200, body
    assert headers["X-Invocation-Id"] and headers["X-Cold-Start"] in ("true", "false") and headers["X-Log-Result"]
    timing = headers["Server-Timing"]
    assert all(f"{name};dur=" in timing for name in ("auth", "persist", "queue", "run", "reply", "total")), timing
    status, _, body = request(f"{invoke}?qualifier=nope", token=token, method="POST", body={})
    assert status == 404 and json.loads(body)["type"] == "ResourceNotFound"
    status, _, body = request(invoke, token="not-a-key", method="POST", body={})
    assert status == 401 and json.loads(body)["type"] == "AuthenticationFailed"  # the REST view's own answer


def get(base: str, path: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A GET on a connection of its own, its response's head read (its body left to the test)."""
    parts = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(str(parts.hostname), parts.port, timeout=60)
    connection.request("GET", path)
    return connection, connection.getresponse()


TICKER = """
import time

def handler(event, context):
    if event["rawPath"] == "/malformed":
        yield {"statusCode": "two hundred"}
        return
    yield {"statusCode": 200, "headers": {"Content-Type": "text/plain"}}
    yield "first\\n"
    time.sleep(3)
    if event["rawPath"] == "/fail":
        raise RuntimeError("gave up")
    yield "second\\n"
"""


def test_a_streaming_url_sends_each_piece_while_the_function_still_runs(served):
    base, token = served
    path = url_path_of_new_function(served, "ticker", TICKER, timeout_s=10, invoke_mode="RESPONSE_STREAM")
    connection, answer = get(base, path)
    assert (answer.status, answer.getheader("Transfer-Encoding")) == (200, "chunked")
    assert answer.readline() == b"first\n"
    # The first piece is here and the function has not finished: it sleeps before the second.
    invocation = f"{base}/api/v1/invocations/{answer.getheader('X-Invocation-Id')}/"
    status, _, body = request(invocation, token=token)
    assert status == 200 and json.loads(body)["status"] == "running", body
    assert answer.read() == b"second\n"

    connection.request("GET", f"{path}fail")
    answer = connection.getresponse()
    assert answer.status == 200 and answer.readline() == b"first\n"
    with pytest.raises(http.client.IncompleteRead):  # cut short: the client can tell the body is not whole
        answer.read()
    status, _, body = request(f"{base}{path}malformed")
    assert status == 502 and json.loads(body) == {"message": "Internal Server Error"}


FLOOD = """
def handler(event, context):
    yield {"statusCode": 200, "headers": {"Content-Type": "application/octet-stream"}}
    for _ in range(40):
        yield b"x" * (1 << 20)
"""


def test_a_slow_reader_holds_the_stream_back_and_one_that_leaves_ends_it(served):
    base, token = served
    path = url_path_of_new_function(served, "flood", FLOOD, timeout_s=30, invoke_mode="RESPONSE_STREAM")
    _, answer = get(base, path)
    assert len(answer.read(1 << 20)) == 1 << 20
    invocation = f"{base}/api/v1/invocations/{answer.getheader('X-Invocation-Id')}/"
    time.sleep(2)  # a reader that stopped: the handler waits at its yield instead of filling memory
    assert json.loads(request(invocation, token=token)[2])["status"] == "running"
    assert len(answer.read()) == 39 << 20  # then it reads on, and gets everything

    connection, answer = get(base, path)
    answer.read(1 << 20)
    invocation = f"{base}/api/v1/invocations/{answer.getheader('X-Invocation-Id')}/"
    connection.close()  # the client leaves: the call ends on its own (not at its timeout), recorded
    deadline = time.monotonic() + 20
    while (record := json.loads(request(invocation, token=token)[2]))["status"] == "running":
        assert time.monotonic() < deadline, record
        time.sleep(0.2)
    assert record["status"] == "succeeded"

from __future__ import annotations

import hashlib
import zipfile

import pytest

from console.exceptions import RequestTooLarge, ServiceError
from functions_app import code
from functions_app.tests.zips import make_zip


def test_it_builds_the_same_zip_bytes_from_the_same_inline_source():
    first = code.zip_from_files({"app.py": "x = 1\n", "lib/util.py": "y = 2\n"})
    second = code.zip_from_files({"lib/util.py": "y = 2\n", "app.py": "x = 1\n"})
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    assert sorted(zipfile.ZipFile(__import__("io").BytesIO(first)).namelist()) == ["app.py", "lib/util.py"]


def test_it_summarises_a_good_zip():
    summary = code.zip_inspect(make_zip({"app.py": "x = 1\n", "pkg/__init__.py": ""}))
    assert summary.names == {"app.py", "pkg/__init__.py"}
    assert summary.file_count == 2
    assert summary.unzipped_bytes == 6


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"/etc/cron.d/evil": "x"}, "absolute path"),
        ({"../outside.py": "x"}, "outside the package"),
        ({"pkg/../../outside.py": "x"}, "outside the package"),
        ({"C:/windows.py": "x"}, "absolute path"),
    ],
)
def test_it_rejects_a_zip_that_escapes_its_directory(files, fragment):
    with pytest.raises(ServiceError, match=fragment) as caught:
        code.zip_inspect(make_zip(files))
    assert caught.value.type == "InvalidZipFile"


@pytest.mark.parametrize("name", ["a" * 300 + ".py", "pkg/" + "é" * 130 + ".py", "/".join(["d" * 200] * 20) + "/x.py"])
def test_it_rejects_a_zip_entry_whose_name_no_file_system_takes(name):
    with pytest.raises(ServiceError, match="longer than a file system takes") as caught:
        code.zip_inspect(make_zip({"app.py": "x", name: "y"}))
    assert caught.value.type == "InvalidZipFile"


def test_it_rejects_a_zip_with_a_symbolic_link():
    with pytest.raises(ServiceError, match="symbolic link"):
        code.zip_inspect(make_zip({"app.py": "x"}, symlinks={"secrets": "/etc/shadow"}))


def test_it_rejects_bytes_that_are_not_a_zip():
    with pytest.raises(ServiceError) as caught:
        code.zip_inspect(b"this is not a zip")
    assert caught.value.type == "InvalidZipFile"


def test_it_rejects_a_zip_over_fifty_megabytes():
    with pytest.raises(RequestTooLarge):
        code.zip_inspect(b"\0" * (code.ZIPPED_MAX_BYTES + 1))


def test_it_rejects_a_zip_that_unzips_past_the_limit(monkeypatch):
    monkeypatch.setattr(code, "UNZIPPED_MAX_BYTES", 1000)
    with pytest.raises(ServiceError) as caught:
        code.zip_inspect(make_zip({"big.bin": b"\0" * 5000}))
    assert caught.value.type == "CodeTooLarge"


def test_it_rejects_a_zip_with_too_many_entries(monkeypatch):
    monkeypatch.setattr(code, "MAX_ENTRIES", 3)
    with pytest.raises(ServiceError, match="entries"):
        code.zip_inspect(make_zip({f"f{i}.py": "" for i in range(4)}))


@pytest.mark.parametrize(
    ("handler", "module"),
    [
        ("app.handler", "app.py"),
        ("pkg.mod.handler", "pkg/mod.py"),
        ("pkg/mod.handler", "pkg/mod.py"),
        ("pkg.handler", "pkg/__init__.py"),
    ],
)
def test_it_finds_the_handler_module_in_its_lambda_spellings(handler, module):
    summary = code.zip_inspect(make_zip({"app.py": "", "pkg/__init__.py": "", "pkg/mod.py": ""}))
    assert code.handler_validate(handler, summary) == module


@pytest.mark.parametrize("handler", ["nodot", "../../x.handler", "app.", ".handler", "app handler.x", "1app.handler"])
def test_it_rejects_a_handler_that_is_not_module_dot_function(handler):
    summary = code.zip_inspect(make_zip({"app.py": ""}))
    with pytest.raises(ServiceError, match=r"module\.function"):
        code.handler_validate(handler, summary)


def test_it_rejects_a_handler_whose_module_is_missing():
    summary = code.zip_inspect(make_zip({"app.py": ""}))
    with pytest.raises(ServiceError) as caught:
        code.handler_validate("missing.handler", summary)
    assert caught.value.type == "HandlerModuleNotFound"


def test_it_reports_a_syntax_error_with_its_line_and_column():
    with pytest.raises(ServiceError) as caught:
        code.syntax_check(b"def handler(event, context):\n    return (\n", "app.py")
    assert caught.value.type == "UserCodeSyntaxError"
    assert caught.value.details["line"] == 2


def test_it_accepts_valid_source():
    code.syntax_check(b"def handler(event, context):\n    return 1\n", "app.py")


def test_it_refuses_source_too_deeply_nested_to_compile_without_hurting_the_caller():
    hostile = b"x = " + b"(" * 100_000 + b")" * 100_000
    with pytest.raises(ServiceError) as caught:
        code.syntax_check(hostile, "app.py")
    assert caught.value.type == "UserCodeSyntaxError"


def test_it_extracts_a_zip_with_real_sizes_checked(tmp_path, monkeypatch):
    data = make_zip({"app.py": "x = 1\n", "pkg/mod.py": "y = 2\n"})
    code.zip_extract(data, tmp_path)
    assert (tmp_path / "pkg" / "mod.py").read_text() == "y = 2\n"
    monkeypatch.setattr(code, "UNZIPPED_MAX_BYTES", 3)
    with pytest.raises(ServiceError):
        code.zip_extract(data, tmp_path / "again")

"""Deployment packages: building them from inline source, checking zips are safe, finding the handler module.

Nothing here executes user code. The syntax check compiles the handler module in a separate, resource-limited
interpreter, because compiling hostile source can cost hundreds of MB and seconds.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import shutil
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from console.exceptions import RequestTooLarge, ServiceError

ZIPPED_MAX_BYTES = 50 * 1024 * 1024  # Lambda: 50 MB zipped, direct upload
UNZIPPED_MAX_BYTES = 250 * 1024 * 1024  # Lambda: 250 MB unzipped
MAX_ENTRIES = 20_000
HANDLER_SOURCE_MAX_BYTES = 5 * 1024 * 1024
INLINE_MAX_BYTES = 3 * 1024 * 1024  # Lambda's console editor limit
# A fixed timestamp makes the same inline source produce the same zip bytes, hence the same sha256.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
HANDLER_RE = re.compile(rf"^{_IDENT}(?:[./]{_IDENT})*\.{_IDENT}$")
SANDBOX_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


class InvalidZip(ServiceError):
    type = "InvalidZipFile"


@dataclass(frozen=True)
class ZipSummary:
    names: frozenset[str]
    unzipped_bytes: int
    file_count: int


def zip_from_files(files: dict[str, str]) -> bytes:
    """A deterministic zip of inline source files ({"lambda_function.py": "def handler..."})."""
    total = sum(len(name.encode()) + len(body.encode()) for name, body in files.items())
    if total > INLINE_MAX_BYTES:
        raise RequestTooLarge(f"Inline source is {total} bytes; the limit is {INLINE_MAX_BYTES} bytes. Upload a zip.")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            _check_member_name(name)
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, files[name])
    return buffer.getvalue()


def zip_inspect(data: bytes) -> ZipSummary:
    """Reject zips that are too big, malformed, or that would write outside their directory."""
    if len(data) > ZIPPED_MAX_BYTES:
        raise RequestTooLarge(f"The zip is {len(data)} bytes; the limit is {ZIPPED_MAX_BYTES} bytes.")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise InvalidZip(f"The code is not a readable zip file ({exc}).") from None
    if len(infos) > MAX_ENTRIES:
        raise InvalidZip(f"The zip has {len(infos)} entries; the limit is {MAX_ENTRIES}.")
    for info in infos:
        _check_member(info)
    unzipped = sum(info.file_size for info in infos)
    if unzipped > UNZIPPED_MAX_BYTES:
        raise ServiceError(
            f"The code unzips to {unzipped} bytes; the limit is {UNZIPPED_MAX_BYTES} bytes.", type="CodeTooLarge"
        )
    files = [info for info in infos if not info.is_dir()]
    return ZipSummary(frozenset(info.filename for info in files), unzipped, len(files))


def _check_member(info: zipfile.ZipInfo) -> None:
    _check_member_name(info.filename)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InvalidZip(f"The zip entry {info.filename!r} is a symbolic link; links are not allowed.")
    # Zips from many tools carry permission bits without a file type; only a type other than file/dir is wrong.
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InvalidZip(f"The zip entry {info.filename!r} is not a regular file or directory.")


# Linux's limits (NAME_MAX, and PATH_MAX less room for where the package is unpacked): a longer entry unpacks
# nowhere, so it is refused at upload instead of failing every cold start.
NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 3072


def _check_member_name(name: str) -> None:
    normalised = name.replace("\\", "/")
    if not normalised or "\x00" in normalised:
        raise InvalidZip("The zip has an entry with an empty or invalid name.")
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised):
        raise InvalidZip(f"The zip entry {name!r} has an absolute path.")
    if ".." in normalised.split("/"):
        raise InvalidZip(f"The zip entry {name!r} points outside the package ('..').")
    too_long = [part for part in normalised.split("/") if len(part.encode()) > NAME_MAX_BYTES]
    if too_long or len(normalised.encode()) > PATH_MAX_BYTES:
        raise InvalidZip(
            f"The zip entry {name[:80]!r}… has a name longer than a file system takes "
            f"({NAME_MAX_BYTES} bytes a name, {PATH_MAX_BYTES} bytes a path)."
        )


def handler_module_candidates(handler: str) -> list[str]:
    """`pkg/mod.fn` and `pkg.mod.fn` both name the module pkg/mod (as Lambda's Python runtime accepts)."""
    module = handler.rsplit(".", 1)[0].replace(".", "/")
    return [f"{module}.py", f"{module}/__init__.py"]


def handler_validate(handler: str, summary: ZipSummary) -> str:
    """Return the archive path of the handler's module, or raise with a message that says what is wrong."""
    if not isinstance(handler, str) or not HANDLER_RE.match(handler):
        raise ServiceError(
            f"Handler {handler!r} must look like 'module.function' (e.g. 'lambda_function.lambda_handler').",
            details={"handler": ["Expected module.function."]},
        )
    for candidate in handler_module_candidates(handler):
        if candidate in summary.names:
            return candidate
    expected = handler_module_candidates(handler)[0]
    raise ServiceError(
        f"Handler {handler!r} needs the module {expected!r}, which is not in the code.",
        details={"handler": [f"Module {expected} not found in the code."]},
        type="HandlerModuleNotFound",
    )


def zip_read_member(data: bytes, name: str, limit: int = HANDLER_SOURCE_MAX_BYTES) -> bytes:
    """Read one member, refusing to decompress more than ``limit`` bytes whatever its header claims."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive, archive.open(name) as member:
        try:
            content = member.read(limit + 1)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise InvalidZip(f"The zip entry {name!r} cannot be read ({exc}).") from None
    if len(content) > limit:
        raise ServiceError(f"The handler module {name!r} is larger than {limit} bytes.", type="CodeTooLarge")
    return content


_SYNTAX_CHECKER = """
import json, sys
source = sys.stdin.buffer.read()
try:
    compile(source, sys.argv[1], "exec", dont_inherit=True)
except SyntaxError as exc:
    print(json.dumps({"line": exc.lineno, "column": exc.offset, "message": exc.msg}))
except (MemoryError, RecursionError, ValueError) as exc:
    print(json.dumps({"line": None, "column": None, "message": type(exc).__name__}))
"""


def _limit_checker() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
    resource.setrlimit(resource.RLIMIT_CPU, (5, 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def syntax_check(source: bytes, filename: str) -> None:
    """Compile the module in a throwaway interpreter capped at 512 MB and 5 CPU seconds."""
    try:
        completed = subprocess.run(
            [SANDBOX_PYTHON, "-I", "-S", "-c", _SYNTAX_CHECKER, filename],
            input=source,
            capture_output=True,
            timeout=10,
            preexec_fn=_limit_checker,
            env={},
        )
    except subprocess.TimeoutExpired:
        raise _too_complex(filename) from None
    if completed.returncode != 0:
        raise _too_complex(filename)
    if not completed.stdout.strip():
        return
    problem = json.loads(completed.stdout)
    if problem["line"] is None:
        raise _too_complex(filename)
    raise ServiceError(
        f"{filename} has a syntax error at line {problem['line']}, column {problem['column']}: {problem['message']}.",
        details=problem,
        type="UserCodeSyntaxError",
    )


def _too_complex(filename: str) -> ServiceError:
    return ServiceError(f"{filename} is too large or too deeply nested to compile.", type="UserCodeSyntaxError")


def zip_extract(data: bytes, destination: Path) -> None:
    """Extract a zip that passed ``zip_inspect``, re-checking real sizes (headers can lie)."""
    budget = UNZIPPED_MAX_BYTES
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            _check_member(info)
            target = destination / info.filename.replace("\\", "/")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as sink:
                copied = _copy_bounded(source, sink, budget)
            budget -= copied
            executable = (info.external_attr >> 16) & 0o111
            os.chmod(target, 0o755 if executable else 0o644)


def _copy_bounded(source: IO[bytes], sink: IO[bytes], budget: int) -> int:
    copied = 0
    while chunk := source.read(1 << 20):
        copied += len(chunk)
        if copied > budget:
            raise ServiceError("The code unzips to more than the allowed size.", type="CodeTooLarge")
        sink.write(chunk)
    return copied


def tree_remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

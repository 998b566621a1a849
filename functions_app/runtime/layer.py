"""Build a read-only runtime layer holding boto3 from the worker's own installation."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile

# boto3 and everything it imports at runtime (pure Python, so the worker's
# 3.11.7 copies run under the sandbox's 3.11.2 interpreter).
BOTO3_PACKAGES = ("boto3", "botocore", "jmespath", "s3transfer", "dateutil", "six", "urllib3")


def _source(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{name} is not installed in this interpreter")
    if spec.submodule_search_locations:
        return os.path.dirname(spec.origin)
    return spec.origin


def _copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # same filesystem: free
    except OSError:
        shutil.copy2(src, dst)


def build_layer(dest: str, packages: tuple[str, ...] = BOTO3_PACKAGES) -> str:
    """Copy ``packages`` into ``dest`` (put on sys.path inside); returns dest. Idempotent.

    Workers starting together on a fresh host build it at once: each package is copied under a name of this
    process's own and renamed into place, so a reader never sees half a package and the loser of a race drops
    its copy instead of failing (copytree into an existing directory raises FileExistsError).
    """
    os.makedirs(dest, exist_ok=True)
    for name in packages:
        src = _source(name)
        target = os.path.join(dest, os.path.basename(src))
        if os.path.exists(target):
            continue
        staging = tempfile.mkdtemp(dir=dest, prefix=f".{os.path.basename(src)}-")
        try:
            staged = os.path.join(staging, os.path.basename(src))
            if os.path.isdir(src):
                # __pycache__ comes along: 3.11.x share a bytecode magic, and the sandbox
                # cannot write .pyc files into a read-only layer.
                shutil.copytree(src, staged, copy_function=_copy)
            else:
                _copy(src, staged)
            with contextlib.suppress(OSError):
                os.rename(staged, target)  # a directory renamed onto another process's fails: that one won
            if not os.path.exists(target):
                raise OSError(f"could not put {name} into the layer at {dest}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest

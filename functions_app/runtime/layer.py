"""Build a read-only runtime layer holding boto3 from the worker's own installation."""

from __future__ import annotations

import importlib.util
import os
import shutil

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
    """Copy ``packages`` into ``dest`` (put on sys.path inside); returns dest. Idempotent."""
    os.makedirs(dest, exist_ok=True)
    for name in packages:
        src = _source(name)
        target = os.path.join(dest, os.path.basename(src))
        if os.path.exists(target):
            continue
        if os.path.isdir(src):
            # __pycache__ comes along: 3.11.x share a bytecode magic, and the sandbox
            # cannot write .pyc files into a read-only layer.
            shutil.copytree(src, target, copy_function=_copy)
        else:
            _copy(src, target)
    return dest

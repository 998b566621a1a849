"""Loaded by pytest before Django settings (``-p console.pytest_env`` in pyproject.toml): tests keep their
state, keys and embedded Redis socket under var/test, apart from a running `make run`."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("EPHEMERA_VAR_DIR", str(Path(__file__).resolve().parent.parent / "var" / "test"))
# Sandbox uids of this run's own (no account has them), so that tests counting or killing sandbox processes by uid
# see only their own, never another run's or the host's.
os.environ.setdefault("SANDBOX_UID", str(2_000_000 + os.getpid() % 5000 * 10_000))
os.environ.setdefault("SANDBOX_UID_COUNT", "10000")

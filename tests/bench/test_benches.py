"""Smoke runs of the control-plane benches at tiny sizes, so they keep working; the figures are not judged here
(benches are not tests), only that each part ran, checked what it checks, and ended with its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_bench(module: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_scheduler_bench_places_through_every_path_without_overcommit() -> None:
    result = run_bench("bench.scheduler", "--hosts", "5", "--servers", "20")
    assert result["never_overcommitted"] is True
    assert result["pure_no_valid_host"] == 0 and result["claim_no_valid_host"] == 0
    assert result["pure_decisions_per_s"] > 0 and result["claim_per_s"] > 0
    assert (result["api_servers"], result["api_active"], result["api_failed_jobs"]) == (20, 20, 0)
    assert result["api_domains_running"] == 20 and result["api_hosts_used"] == 5


def test_api_bench_loads_controller_and_bare_endpoint_alike() -> None:
    result = run_bench(
        "bench.api",
        "--servers",
        "20",
        "--hosts",
        "2",
        "--seconds",
        "0.5",
        "--rounds",
        "1",
        "--concurrency",
        "2",
    )
    assert result["servers"] == 20
    for name in ("show", "list_all", "list_20"):
        figures = result[name]
        assert figures["errors"] == 0, name
        assert figures["controller_per_s"] > 0 and figures["bare_per_s"] > 0, name
        assert figures["controller_p50_ms"] <= figures["controller_p99_ms"], name
    assert isinstance(result["bar_met"], bool)

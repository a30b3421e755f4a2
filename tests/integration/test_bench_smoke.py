"""A smoke of the benchmark harness (`python -m bench`), to keep it working.

Benchmarks are not tests: nothing here asserts a timing. One test renders the report from
made-up figures; the other runs the harness's ``--quick`` mode (tiny counts, one run) against
the real services and checks that it completes, counts every event, and writes its JSON where
it was told to, leaving the checkout as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import render, summarize

ROOT = Path(__file__).resolve().parents[2]
# What Python and the tools write by themselves; anything else the bench writes is a leak.
CACHES = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
          ".hypothesis"}  # fmt: skip
SECTIONS = ["--only", "throughput", "--only", "publish", "--only", "claim"]


def checkout_files() -> dict[str, tuple[int, int]]:
    """Every file of the checkout but caches: path -> (size, mtime in ns)."""
    files: dict[str, tuple[int, int]] = {}
    for directory, subdirectories, names in os.walk(ROOT):
        subdirectories[:] = [d for d in subdirectories if d not in CACHES]
        for name in names:
            stat = (Path(directory) / name).stat()
            files[os.path.relpath(Path(directory) / name, ROOT)] = (stat.st_size, stat.st_mtime_ns)
    return files


def made_up_results() -> dict[str, object]:
    per_run = {
        "raw": [{"raw_post_per_s": 1000.0, "receiver_cpu_us_per_request": 40.0}],
        "noop_drain": [{"noop_per_s": 200.0}],
        "naive_drain": [{"naive_per_s": 20.0, "lost": 0.0, "arrived_not_stored": 0.0}],
        "product_drain": [
            {
                "per_s": 150.0,
                "lost": 0.0,
                "never_attempted": 0.0,
                "worker_cpu_us_per_delivery": 2500.0,
                "pg_cpu_us_per_delivery": 700.0,
            }
        ],
        "product_paced": [
            {
                "latency_p50_ms": 10.0,
                "latency_p95_ms": 30.0,
                "latency_p99_ms": 50.0,
                "lost": 0.0,
                "never_attempted": 0.0,
            }
        ],
        "noop_paced": [{"noop_p50_ms": 2.5, "noop_p95_ms": 5.0, "noop_p99_ms": 8.0}],
    }
    meta = {
        "date": "2026-01-01 00:00:00 UTC",
        "cpu": "a CPU",
        "cores": 2,
        "load_average_at_start": ["0.1", "0.1", "0.1"],
        "commit": "abc1234",
        "versions": {
            k: "1"
            for k in (
                "python",
                "celery",
                "kombu",
                "redis",
                "httpx",
                "httpcore",
                "SQLAlchemy",
                "psycopg",
                "postgres",
                "redis-server",
                "nginx",
            )
        },
        "receiver": "nginx",
        "config": {"runs": 1},
    }
    one = lambda v: {"min": v, "median": v, "max": v, "n": 1}  # noqa: E731
    extra = {
        "publish_endpoints": {
            f"e{n}": {
                "endpoints": n,
                "publish_p50_ms": one(3.0 * ratio),
                "bare_insert_p50_ms": one(3.0),
                "ratio": one(ratio),
            }
            for n, ratio in ((1, 1.2), (500, 1.4), (5000, 1.6))
        },
        "api": {
            "hello_per_s": one(8000.0),
            "list_per_s": one(2400.0),
            "list_half_p99_ms": one(20.0),
            "list_page_large_ms": one(3.0),
            "list_page_small_ms": one(2.0),
            "sizes": {"large": 1_000_000, "small": 10_000},
        },
    }
    return summarize(meta, per_run, extra, [])  # type: ignore[arg-type]


def test_report_pairs_each_product_figure_with_its_same_run_baselines() -> None:
    results = made_up_results()
    ratios = results["ratios"]
    assert ratios["throughput_vs_noop"]["median"] == pytest.approx(0.75)  # type: ignore[index]
    assert ratios["throughput_vs_naive"]["median"] == pytest.approx(7.5)  # type: ignore[index]
    met = {t["target"]: t["met"] for t in results["targets"]}  # type: ignore[attr-defined]
    # Issue 15's targets: 1.5x Celery's no-op and 20x the naive design.
    assert met["throughput vs Celery no-op (same run)"] is False
    assert met["throughput vs naive baseline (same run)"] is False
    assert met["commit→arrival p50 at half peak (ms)"] is True
    assert met["claim time, 1 M vs 10 k rows of history"] is None  # not measured here
    # Publish against a bare INSERT at one endpoint and at the largest project measured.
    assert met["publish p50, 8 writers, 1 endpoint, vs a bare INSERT"] is True
    assert met["publish p50, 8 writers, 5,000 endpoints, vs a bare INSERT"] is False
    # Issue 13's: the list page at 30 % of hello, 1.5x the page cost with the large history.
    assert met["API list page rate, % of a bare uvicorn hello"] is True
    assert met["API list page, large vs small history"] is True
    assert met["API filtered page rate, % of a bare uvicorn hello"] is None
    markdown = render(results)
    assert "| throughput vs Celery no-op (same run) | ≥ 1.5x | 0.75 | **not met** |" in markdown
    assert "| publish ms p50, 8 writers, project of 5,000 endpoints | " in markdown
    assert "| API list page ms, 1,000,000 attempts stored | 3.00 / 3.00 / 3.00 |" in markdown
    assert "| worker CPU, µs | 2,500 / 2,500 / 2,500 |" in markdown
    assert "| dispatcher CPU, µs | - |" in markdown  # a cost not measured shows as such


@pytest.mark.slow
def test_quick_bench_runs_every_pipeline_and_counts_every_event(
    service_urls: tuple[str, str], tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": service_urls[0],
        "CELERY_BROKER_URL": service_urls[1],
    }
    before = checkout_files()
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *SECTIONS, "--results-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "## Targets (issues 15 and 13; claim time and RSS from issue 5)" in completed.stdout
    assert checkout_files() == before, "the bench wrote into the checkout"
    results = json.loads((tmp_path / "latest-quick.json").read_text())
    product = results["per_run"]["product_drain"][0]
    assert product["healthy_succeeded"] == product["events"]
    assert product["lost"] == 0 and product["never_attempted"] == 0
    assert product["attempts_stored"] >= product["events"]
    # The drain's processes and their Postgres backends did work, and Postgres logged it.
    for cost in ("worker_cpu", "dispatcher_cpu", "pg_cpu"):
        assert product[f"{cost}_us_per_delivery"] > 0, cost
    assert product["pg_backends"] >= 1
    assert product["wal_bytes_per_delivery"] > 0
    assert product["broker_in_bytes_per_delivery"] > 0
    assert results["per_run"]["noop_drain"][0]["completed"] == results["meta"]["config"]["events"]
    assert "product_w8" in results["extra"]["publish"]
    # Issue 15's publish figures: by endpoints per project, and one event's fan-out.
    assert sorted(r["endpoints"] for r in results["extra"]["publish_endpoints"].values()) == [
        1,
        5,
        50,
    ]
    claim = results["extra"]["claim"]  # every due delivery claimed, over both histories
    assert claim["small_ms"]["n"] == claim["large_ms"]["n"] == 1
    fan = results["extra"]["fan_out"]
    assert fan["arrived"] == fan["endpoints"] == 50


@pytest.mark.slow
def test_quick_api_bench_serves_every_route_without_an_error() -> None:
    """`bench.api_bench` with a few thousand rows and a second per figure: both API processes
    and the hello app start, every request of every loop is answered 200, and the summary
    compares each figure with its target."""
    from bench import api_bench

    results = api_bench.measure(api_bench.Sizes.quick(), runs=1)
    for route in ("hello", *api_bench.ROUTES):
        assert results[f"{route}_per_s"]["median"] > 0
        assert results[f"{route}_errors"]["max"] == 0
        assert results[f"{route}_half_errors"]["max"] == 0
    for kind in ("sync", "async"):  # FastAPI's own ceiling, beside them
        assert results[f"framework_{kind}_per_s"]["median"] > 0
        assert results[f"framework_{kind}_errors"]["max"] == 0
    lines = api_bench.summary(results)
    assert [line.split(":")[0] for line in lines] == [
        "hello",
        "FastAPI's own ceiling for the list's route shape (no database, no guard)",
        "list",
        "filtered",
    ]
    assert all("met" in line for line in lines[2:])

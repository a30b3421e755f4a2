"""The results: the machine and versions, each figure as min/median/max over runs beside its
baselines from the same invocation, the issue's targets met or not; as JSON and Markdown.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from bench.common import ROOT, broker_url, database_url, spread
from bench.receivers import nginx_version
from webhooks.settings import normalize_database_url

RESULTS_DIR = ROOT / "bench" / "results"
RESULTS_MD = ROOT / "bench" / "RESULTS.md"
ANALYSIS_MARKER = "<!-- analysis: kept across runs -->"


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(  # noqa: S603 (fixed argv: lscpu, nproc, git)
            argv, capture_output=True, text=True, check=False, timeout=10
        ).stdout
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    """Date, CPU model (lscpu), cores, memory, load, and the versions of everything measured."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _run(["lscpu"]).splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    versions = {"python": platform.python_version()}
    for package in ("celery", "kombu", "redis", "httpx", "httpcore", "SQLAlchemy", "psycopg"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "?"
    try:
        engine = sa.create_engine(normalize_database_url(database_url()))
        with engine.connect() as conn:
            versions["postgres"] = conn.execute(sa.text("SHOW server_version")).scalar_one()
        engine.dispose()
    except sa.exc.SQLAlchemyError:
        versions["postgres"] = "?"
    # Asked of the broker itself: the embedded one is not on redis-cli's default port.
    try:
        client = redis.Redis.from_url(broker_url())
        versions["redis-server"] = str(client.info("server").get("redis_version", "?"))
        client.close()
    except redis.RedisError:
        versions["redis-server"] = "?"
    versions["nginx"] = nginx_version() or "not installed"
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": load,
        "commit": _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).strip(),
        "versions": versions,
    }


def ratio_spread(numerators: list[float], denominators: list[float]) -> dict[str, float]:
    """Per-run ratios (run i over run i: both measured in the same run), as a spread."""
    return spread([n / d for n, d in zip(numerators, denominators, strict=False) if d])


def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def fmt_spread(figure: dict[str, float] | None, digits: int = 1) -> str:
    if not figure or not figure.get("n"):
        return "-"
    return " / ".join(fmt(figure[k], digits) for k in ("min", "median", "max"))


def write(
    results: dict[str, Any],
    markdown: str,
    quick: bool,
    *,
    markdown_too: bool = False,
    directory: Path = RESULTS_DIR,
) -> Path:
    """Write the JSON under ``directory`` (bench/results/, git-ignored, by default) and, if
    asked, the Markdown to the committed RESULTS.md."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = directory / f"{'quick-' if quick else ''}{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    (directory / ("latest-quick.json" if quick else "latest.json")).write_text(
        json.dumps(results, indent=2, default=str)
    )
    if markdown_too:
        # The hand-written analysis below the marker survives a new run.
        kept = ""
        if RESULTS_MD.exists():
            _, marker, tail = RESULTS_MD.read_text().partition(ANALYSIS_MARKER)
            kept = marker + tail if marker else ""
        RESULTS_MD.write_text(markdown.rstrip("\n") + "\n\n" + kept if kept else markdown)
    return path

"""``python -m bench`` (``make bench``): every benchmark, each product figure beside its
baselines measured in the same invocation on the same machine.

1. the limits: raw POST rate of one keep-alive `httpx.Client` thread to the receiver, and
   Celery's own no-op task rate and hop latency with the worker settings we ship;
2. the naive baseline (`bench.naive`);
3. the product: ``publish()`` → dispatcher → worker → receiver, every attempt stored, and
   in its backlog drain what one delivery costs each resource (`bench.costs`);
4. a healthy endpoint's latency while a bulk recovery runs, beside the same stretch without
   it (`bench.recovery_fairness`).

Uses the Postgres and Redis of ``DATABASE_URL`` and ``CELERY_BROKER_URL``; where one is
unset, an embedded server is started for the run and stopped after it, as ``make dev`` and
``make test`` do (figures then include the embedded servers' own overhead). For the fast
receiver it uses nginx if installed (``apt-get install -y nginx-light``); otherwise a Python
receiver, whose own top rate is printed. ``--quick`` is the CI smoke: tiny counts, one run.

Results: the Markdown table on stdout and the JSON in ``bench/results/`` (git-ignored);
``--write-results`` also rewrites the committed ``bench/RESULTS.md`` (keeping its analysis).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SECTIONS = ("throughput", "latency", "blackhole", "rss", "claim", "publish", "recovery", "api")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke: tiny counts, one run")
    parser.add_argument(
        "--write-results",
        action="store_true",
        help="also rewrite bench/RESULTS.md, which is committed (a full run only)",
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each figure (3)")
    parser.add_argument(
        "--events",
        type=int,
        default=10_000,
        help="events per throughput run of the product and the no-op (10,000; use fewer on a "
        "busy machine and say so)",
    )
    parser.add_argument(
        "--naive-events",
        type=int,
        default=1_000,
        help="events per throughput run of the naive baseline (1,000: it runs ~20/s here)",
    )
    parser.add_argument(
        "--paced-events", type=int, default=2_000, help="events per paced latency run (2,000)"
    )
    parser.add_argument(
        "--naive-paced-events",
        type=int,
        default=500,
        help="events per paced latency run of the naive baseline (500)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="worker threads, as the Procfile ships (32)"
    )
    parser.add_argument(
        "--history-rows",
        type=int,
        default=1_000_000,
        help="rows of history for the large claim-time case (1,000,000)",
    )
    parser.add_argument(
        "--publish-calls", type=int, default=400, help="publish() calls per writer per run (400)"
    )
    parser.add_argument(
        "--endpoints",
        type=int,
        default=5_000,
        help="the largest project's endpoints, for publish cost by endpoints (beside 1 and a "
        "tenth of it) and the fan-out of one event (5,000)",
    )
    parser.add_argument(
        "--recovery-deliveries",
        type=int,
        default=3_000,
        help="failed deliveries replayed by the recovery-fairness run's recovery (3,000)",
    )
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only these sections (repeatable)"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="where the JSON of the run goes (default: bench/results/)",
    )
    parser.add_argument(
        "--no-nginx",
        action="store_true",
        help="use the Python fast receiver even if nginx is installed",
    )
    args = parser.parse_args(argv)
    if args.quick and args.write_results:
        parser.error("--write-results records a full run; --quick figures are not results")
    if args.quick:
        args.runs = 1
        args.events = min(args.events, 60)
        args.naive_events = min(args.naive_events, 20)
        args.paced_events = min(args.paced_events, 30)
        args.naive_paced_events = min(args.naive_paced_events, 10)
        args.concurrency = min(args.concurrency, 4)
        args.history_rows = min(args.history_rows, 20_000)
        args.publish_calls = min(args.publish_calls, 10)
        args.endpoints = min(args.endpoints, 50)
        args.recovery_deliveries = min(args.recovery_deliveries, 60)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with embedded_services():
        return run(args)


@contextlib.contextmanager
def embedded_services() -> Iterator[None]:
    """Start embedded Postgres and Redis for whichever of DATABASE_URL and CELERY_BROKER_URL
    is unset, export their URLs for this process and its children, and stop them after."""
    missing = [name for name in ("DATABASE_URL", "CELERY_BROKER_URL") if not os.environ.get(name)]
    if not missing:
        yield
        return
    from bench.common import say
    from webhooks.dev import embedded

    root = Path(tempfile.mkdtemp(prefix="bench-embedded-"))
    started: list[embedded.EmbeddedPostgres | embedded.EmbeddedRedis] = []
    try:
        if "DATABASE_URL" in missing:
            started.append(embedded.start_postgres(root / "postgres"))
            os.environ["DATABASE_URL"] = started[-1].url
        if "CELERY_BROKER_URL" in missing:
            started.append(embedded.start_redis(root / "redis"))
            os.environ["CELERY_BROKER_URL"] = started[-1].url
        say(f"{' and '.join(missing)} unset: embedded servers in {root} for this run")
        yield
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    """Every section asked for, then the report; the servers are up."""
    # The apps read their queue names once, at import: one queue each for this invocation.
    tag = secrets.token_hex(3)
    os.environ.setdefault("BENCH_NOOP_QUEUE", f"bench_noop_{tag}")
    os.environ.setdefault("BENCH_NAIVE_QUEUE", f"bench_naive_{tag}")

    from bench import claim_time, publish_cost, recovery_fairness, report, runs
    from bench.common import say, spread
    from bench.receivers import Receivers

    sections = set(args.only or SECTIONS)
    logdir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    config = runs.Config(
        events=args.events,
        paced_events=args.paced_events,
        concurrency=args.concurrency,
        rss_events=4 if args.quick else 20,
        logdir=logdir,
        drain_timeout=120 if args.quick else 900,
    )
    per_run: dict[str, list[dict[str, float]]] = {}
    notes: list[str] = []

    def record(name: str, outcome: runs.Outcome) -> None:
        per_run.setdefault(name, []).append(outcome.figures)
        notes.extend(outcome.notes)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in outcome.figures.items())
        say(f"{name}: {shown}")

    meta = report.machine()
    started = time.monotonic()
    say(f"logs in {logdir}; sections {sorted(sections)}; {args.runs} run(s)")
    with Receivers(prefer_nginx=not args.no_nginx) as receivers:
        fast = receivers.fast()
        meta["receiver"] = fast.kind
        for _ in range(args.runs):
            record("raw", runs.raw_post_rate(fast, 200 if args.quick else 3000))
        if sections & {"throughput", "latency", "blackhole"}:
            for n in range(args.runs):
                say(f"throughput run {n + 1}/{args.runs}")
                record("noop_drain", runs.noop_run(config, None, args.events))
                record("naive_drain", runs.naive_run(config, fast, None, args.naive_events))
                record("product_drain", runs.product_run(config, fast, None, None, args.events))
                if "blackhole" in sections:
                    record(
                        "product_blackhole_drain",
                        runs.product_run(config, fast, receivers.blackhole(), None, args.events),
                    )
        peak = spread([r["per_s"] for r in per_run.get("product_drain", [])])["median"]
        pace = peak / 2 if peak == peak else 20.0
        meta["paced_per_s"] = pace
        if sections & {"latency", "blackhole"}:
            for n in range(args.runs):
                say(f"latency run {n + 1}/{args.runs} at {pace:.0f}/s (half the product's peak)")
                record("noop_paced", runs.noop_run(config, pace, args.paced_events))
                record("naive_paced", runs.naive_run(config, fast, pace, args.naive_paced_events))
                record(
                    "product_paced", runs.product_run(config, fast, None, pace, args.paced_events)
                )
                if "blackhole" in sections:
                    record(
                        "product_blackhole_paced",
                        runs.product_run(
                            config, fast, receivers.blackhole(), pace, args.paced_events
                        ),
                    )
        if "rss" in sections:
            for n in range(args.runs):
                say(f"rss run {n + 1}/{args.runs}")
                record("product_rss", runs.product_rss(config, fast, receivers.big()))
                record("naive_rss", runs.naive_rss(config, fast, receivers.big()))
        extra: dict[str, Any] = {}
        if "recovery" in sections:
            say(f"recovery fairness: {args.recovery_deliveries} replays beside a healthy endpoint")
            extra["recovery"] = recovery_fairness.measure(
                fast,
                receivers.blackhole(),
                runs=args.runs,
                deliveries=args.recovery_deliveries,
                baseline_events=30 if args.quick else 500,
                # The black hole alone holds up to its cap (10) of the worker's threads: with
                # --quick's 4 the baseline would measure that instead.
                concurrency=16 if args.quick else args.concurrency,
                logdir=logdir,
            )
            rf = extra["recovery"]["figures"]
            say(
                f"recovery: healthy p99 {rf['recovery_p99_ms']['median']:.1f} ms during it, "
                f"{rf['baseline_p99_ms']['median']:.1f} ms without it"
            )
    if "claim" in sections:
        say(f"claim time: 10k vs {args.history_rows} rows of history")
        extra["claim"] = claim_time.measure(
            small=min(10_000, args.history_rows // 2),
            large=args.history_rows,
            runs=args.runs,
            repeats=5 if args.quick else 20,
        )
        say(f"claim: {extra['claim']}")
    if "publish" in sections:
        say("publish cost")
        extra["publish"] = publish_cost.measure(runs=args.runs, calls=args.publish_calls)
        say(f"publish: {extra['publish']}")
        counts = (1, max(2, args.endpoints // 10), args.endpoints)
        say(f"publish cost with 8 writers by endpoints per project: {counts}")
        extra["publish_endpoints"] = publish_cost.measure_by_endpoints(
            runs=args.runs, calls=args.publish_calls, counts=counts
        )
        say(f"publish by endpoints: {extra['publish_endpoints']}")
        say(f"fan-out: one event to {args.endpoints} endpoints")
        extra["fan_out"] = publish_cost.fan_out(args.endpoints)
        say(f"fan-out: {extra['fan_out']}")
    if "api" in sections:
        from bench import api_bench

        say("HTTP API: list pages beside a bare uvicorn hello route")
        sizes = api_bench.Sizes.quick() if args.quick else api_bench.Sizes()
        extra["api"] = api_bench.measure(sizes, runs=args.runs)
        say("api: " + "; ".join(api_bench.summary(extra["api"])))
    meta["elapsed_seconds"] = round(time.monotonic() - started)
    meta["config"] = {k: v for k, v in vars(args).items()}
    results = summarize(meta, per_run, extra, notes)
    markdown = render(results)
    path = report.write(
        results,
        markdown,
        quick=args.quick,
        markdown_too=args.write_results,
        directory=args.results_dir or report.RESULTS_DIR,
    )
    print(markdown)
    say(f"JSON: {path}{'; Markdown: bench/RESULTS.md' if args.write_results else ''}")
    return 0


def _spreads(per_run: dict[str, list[dict[str, float]]], name: str) -> dict[str, Any]:
    from bench.common import spread

    rows = per_run.get(name, [])
    keys = sorted({k for row in rows for k in row})
    return {k: spread([row[k] for row in rows if k in row]) for k in keys}


def _column(per_run: dict[str, list[dict[str, float]]], name: str, key: str) -> list[float]:
    return [row.get(key, float("nan")) for row in per_run.get(name, [])]


def summarize(
    meta: dict[str, Any],
    per_run: dict[str, list[dict[str, float]]],
    extra: dict[str, Any],
    notes: list[str],
) -> dict[str, Any]:
    """Spreads, same-run ratios and the targets."""
    from bench.report import ratio_spread

    figures = {name: _spreads(per_run, name) for name in per_run}
    col = lambda name, key: _column(per_run, name, key)  # noqa: E731
    ratios: dict[str, Any] = {}
    if "product_drain" in per_run:
        ratios["throughput_vs_noop"] = ratio_spread(
            col("product_drain", "per_s"), col("noop_drain", "noop_per_s")
        )
        ratios["throughput_vs_naive"] = ratio_spread(
            col("product_drain", "per_s"), col("naive_drain", "naive_per_s")
        )
        ratios["throughput_vs_raw_post"] = ratio_spread(
            col("product_drain", "per_s"), col("raw", "raw_post_per_s")
        )
    if "product_blackhole_drain" in per_run:
        ratios["blackhole_throughput_vs_clean"] = ratio_spread(
            col("product_blackhole_drain", "per_s"), col("product_drain", "per_s")
        )
    for q in ("p50", "p95", "p99"):
        if "product_paced" in per_run:
            ratios[f"latency_{q}_vs_noop"] = ratio_spread(
                col("product_paced", f"latency_{q}_ms"), col("noop_paced", f"noop_{q}_ms")
            )
            ratios[f"latency_{q}_vs_naive"] = ratio_spread(
                col("product_paced", f"latency_{q}_ms"), col("naive_paced", f"naive_{q}_ms")
            )
    if "product_rss" in per_run:
        ratios["rss_growth_vs_naive"] = ratio_spread(
            col("product_rss", "rss_growth_mb"), col("naive_rss", "rss_growth_mb")
        )
    if "claim" in extra:
        c = extra["claim"]
        ratios["claim_large_vs_small"] = {
            "median": c["large_ms"]["median"] / c["small_ms"]["median"],
            "min": c["large_ms"]["min"] / c["small_ms"]["max"],
            "max": c["large_ms"]["max"] / c["small_ms"]["min"],
            "n": 1,
        }
    if "recovery" in extra:
        rows = extra["recovery"]["per_run"]
        ratios["recovery_healthy_p99_vs_baseline"] = ratio_spread(
            [row["recovery_p99_ms"] for row in rows], [row["baseline_p99_ms"] for row in rows]
        )
    if "publish" in extra:
        p = extra["publish"]
        for w in (1, 8):
            product = p.get(f"product_w{w}", {}).get("p50_ms", {}).get("median", float("nan"))
            for base in ("limit", "naive", "product_poll"):
                b = p.get(f"{base}_w{w}", {}).get("p50_ms", {}).get("median", float("nan"))
                ratios[f"publish_w{w}_vs_{base}"] = {
                    "median": product / b if b else float("nan"),
                    "n": 1,
                }
    results = {
        "meta": meta,
        "figures": figures,
        "ratios": ratios,
        "extra": extra,
        "per_run": per_run,
        "notes": notes,
    }
    results["targets"] = targets(results)
    return results


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured (median) figure and met / not met."""
    f, r, extra = results["figures"], results["ratios"], results["extra"]
    nan = float("nan")

    def med(group: dict[str, Any], key: str) -> float:
        return group.get(key, {}).get("median", nan)

    def worst(name: str, key: str) -> float:
        return f.get(name, {}).get(key, {}).get("max", nan)

    out = []

    def add(name: str, measured: float, goal: str, met: bool | None) -> None:
        out.append(
            {
                "target": name,
                "goal": goal,
                "measured": measured,
                "met": None if measured != measured else met,
            }
        )

    # Issue 15: throughput past Celery's per-task cost, latency, black holes, publish.
    v = med(r, "throughput_vs_noop")
    add("throughput vs Celery no-op (same run)", v, "≥ 1.5x", v >= 1.5)
    v = med(r, "throughput_vs_naive")
    add("throughput vs naive baseline (same run)", v, "≥ 20x", v >= 20)
    v = med(f.get("product_paced", {}), "latency_p50_ms")
    add("commit→arrival p50 at half peak (ms)", v, "≤ 10", v <= 10)
    v = med(f.get("product_paced", {}), "latency_p99_ms")
    add("commit→arrival p99 at half peak (ms)", v, "≤ 60", v <= 60)
    lost = max(
        (
            worst(n, k)
            for n in (
                "product_drain",
                "product_paced",
                "product_blackhole_drain",
                "product_blackhole_paced",
            )
            for k in ("lost", "never_attempted")
            if n in f
        ),
        default=nan,
    )
    add("events lost or never attempted, worst run (healthy endpoints)", lost, "0", lost == 0)
    v = med(r, "blackhole_throughput_vs_clean")
    add("healthy throughput with 10 % black-holed vs without", v, "≥ 0.9x", v >= 0.9)
    v = med(f.get("product_blackhole_paced", {}), "latency_p99_ms")
    add("healthy p99 with 10 % black-holed (ms)", v, "≤ 1000", v <= 1000)
    by_endpoints = extra.get("publish_endpoints", {})
    largest = max((row["endpoints"] for row in by_endpoints.values()), default=5_000)
    for size in (1, largest):
        v = by_endpoints.get(f"e{size}", {}).get("ratio", {}).get("median", nan)
        add(
            f"publish p50, 8 writers, {size:,} endpoint{'s' if size > 1 else ''}, vs a bare INSERT",
            v,
            "≤ 1.5x",
            v <= 1.5,
        )
    # Issue 13: the HTTP API's list pages.
    api = extra.get("api", {})
    hello = api.get("hello_per_s", {}).get("median", nan)
    for route in ("list", "filtered"):
        v = 100 * api.get(f"{route}_per_s", {}).get("median", nan) / hello
        add(f"API {route} page rate, % of a bare uvicorn hello", v, "≥ 25", v >= 25)
        v = api.get(f"{route}_half_p99_ms", {}).get("median", nan)
        add(f"API {route} page p99 at half of its peak (ms)", v, "≤ 100", v <= 100)
        large = api.get(f"{route}_page_large_ms", {}).get("median", nan)
        v = large / api.get(f"{route}_page_small_ms", {}).get("median", nan)
        add(f"API {route} page, large vs small history", v, "≤ 1.5x", v <= 1.5)
    # Issue 5's, still kept.
    v = med(r, "claim_large_vs_small")
    add("claim time, 1 M vs 10 k rows of history", v, "≤ 1.5x", v <= 1.5)
    v = med(f.get("product_rss", {}), "rss_growth_mb")
    add("worker RSS growth across 50 MB responses (MB)", v, "< 20", v < 20)
    return out


def render(results: dict[str, Any]) -> str:
    """The Markdown summary committed as bench/RESULTS.md."""
    from bench.report import fmt, fmt_spread

    meta, f, r, extra = results["meta"], results["figures"], results["ratios"], results["extra"]
    cfg = meta.get("config", {})
    v = meta["versions"]

    nan = float("nan")

    def g(name: str, key: str) -> dict[str, float] | None:
        return f.get(name, {}).get(key)

    lines = [
        "# Benchmark results",
        "",
        f"Latest full run of `make bench` (`python -m bench`), {meta['date']}, commit "
        f"`{meta['commit']}`. JSON of every run: `bench/results/` (git-ignored).",
        "",
        f"- Machine: {meta['cpu']}, {meta['cores']} cores (KVM), load average at start "
        f"{' '.join(meta['load_average_at_start'])}. **Shared with other workloads (other "
        "agents' test suites) during the run**: figures are noisy; compare ratios, which "
        "pair figures measured in the same run.",
        f"- Versions: Python {v['python']}, Celery {v['celery']}, kombu {v['kombu']}, "
        f"redis-py {v['redis']}, httpx {v['httpx']}, httpcore {v['httpcore']}, SQLAlchemy "
        f"{v['SQLAlchemy']}, psycopg {v['psycopg']}, PostgreSQL {v['postgres']}, Redis "
        f"{v['redis-server']}, nginx {v['nginx']}.",
        f"- Receiver: {meta.get('receiver')} (`return 204`, access log of arrival times) on "
        "127.0.0.1; black hole: accepts, never answers.",
        f"- Runs: {cfg.get('runs')} of each figure, shown as **min / median / max**; "
        f"{cfg.get('events')} events per product and no-op throughput run, "
        f"{cfg.get('naive_events')} per naive throughput run (its rate is steady; 10,000 "
        f"would take ~10 min a run), {cfg.get('paced_events')} per paced product/no-op run "
        f"and {cfg.get('naive_paced_events')} per paced naive run, paced at "
        f"{fmt(meta.get('paced_per_s', float('nan')))}/s (half the product's median peak), "
        "each after warm-up events at the same pace (50 for the product and the no-op, 10 "
        "for the naive baseline) that are waited for and not counted. "
        f"Worker: `-P threads -c {cfg.get('concurrency')}` for the no-op, the naive baseline "
        f"and the product alike. Whole invocation: {meta.get('elapsed_seconds')} s.",
        "- Ratios are per run (product of run *i* over the baseline of run *i*), then "
        "min / median / max.",
        "",
        "## Targets (issues 15 and 13; claim time and RSS from issue 5)",
        "",
        "| target | goal | measured (median) | met |",
        "|---|---|---|---|",
    ]
    for t in results["targets"]:
        met = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {t['goal']} | {fmt(t['measured'], 2)} | {met} |")
    lines += [
        "",
        "## Figures",
        "",
        "| figure | product | limit (same run) | product ÷ limit | naive (same run) | "
        "product ÷ naive |",
        "|---|---|---|---|---|---|",
        f"| deliveries/s, backlog drain | {fmt_spread(g('product_drain', 'per_s'))} | "
        f"no-op Celery task {fmt_spread(g('noop_drain', 'noop_per_s'))}; one httpx thread "
        f"{fmt_spread(g('raw', 'raw_post_per_s'))} | "
        f"{fmt_spread(r.get('throughput_vs_noop'), 2)} (vs no-op); "
        f"{fmt_spread(r.get('throughput_vs_raw_post'), 2)} (vs httpx) | "
        f"{fmt_spread(g('naive_drain', 'naive_per_s'))} | "
        f"{fmt_spread(r.get('throughput_vs_naive'), 1)} |",
    ]
    for q in ("p50", "p95", "p99"):
        lines.append(
            f"| commit→arrival {q}, ms, paced | {fmt_spread(g('product_paced', f'latency_{q}_ms'))}"
            f" | no-op hop {fmt_spread(g('noop_paced', f'noop_{q}_ms'))} | "
            f"{fmt_spread(r.get(f'latency_{q}_vs_noop'), 1)} | "
            f"{fmt_spread(g('naive_paced', f'naive_{q}_ms'))} | "
            f"{fmt_spread(r.get(f'latency_{q}_vs_naive'), 2)} |"
        )
    lines += [
        f"| healthy deliveries/s, 10 % black-holed | "
        f"{fmt_spread(g('product_blackhole_drain', 'per_s'))} | product without black holes "
        f"{fmt_spread(g('product_drain', 'per_s'))} | "
        f"{fmt_spread(r.get('blackhole_throughput_vs_clean'), 2)} | not run | - |",
        f"| healthy p99 ms, 10 % black-holed, paced | "
        f"{fmt_spread(g('product_blackhole_paced', 'latency_p99_ms'))} | product without "
        f"{fmt_spread(g('product_paced', 'latency_p99_ms'))} | - | not run | - |",
        f"| worker RSS growth, MB, {20 if not cfg.get('quick') else 4} x 50 MB responses | "
        f"{fmt_spread(g('product_rss', 'rss_growth_mb'))} (before "
        f"{fmt_spread(g('product_rss', 'rss_before_mb'))}) | - | - | "
        f"{fmt_spread(g('naive_rss', 'rss_growth_mb'))} | "
        f"{fmt_spread(r.get('rss_growth_vs_naive'), 2)} |",
    ]
    claim = extra.get("claim")
    if claim:
        lines.append(
            f"| claim_due ms, {claim['history_rows']['large']:,} rows of history | "
            f"{fmt_spread(claim['large_ms'], 2)} | same with "
            f"{claim['history_rows']['small']:,} rows {fmt_spread(claim['small_ms'], 2)} | "
            f"{fmt(r['claim_large_vs_small']['median'], 2)} | - | - |"
        )
    pub = extra.get("publish")
    if pub:
        for w in (1, 8):
            lines.append(
                f"| publish ms p50, {w} writer{'s' if w > 1 else ''} (NOTIFY, as shipped) | "
                f"{fmt_spread(pub[f'product_w{w}']['p50_ms'], 2)} | one INSERT per "
                f"transaction {fmt_spread(pub[f'limit_w{w}']['p50_ms'], 2)} | "
                f"{fmt(r[f'publish_w{w}_vs_limit']['median'], 2)} | "
                f"{fmt_spread(pub[f'naive_w{w}']['p50_ms'], 2)} | "
                f"{fmt(r[f'publish_w{w}_vs_naive']['median'], 2)} |"
            )
            lines.append(
                f"| publish ms p50, {w} writer{'s' if w > 1 else ''}, WEBHOOKS_NOTIFY=false | "
                f"{fmt_spread(pub[f'product_poll_w{w}']['p50_ms'], 2)} | - | - | - | - |"
            )
    for row in extra.get("publish_endpoints", {}).values():
        lines.append(
            f"| publish ms p50, 8 writers, project of {row['endpoints']:,} "
            f"endpoint{'s' if row['endpoints'] > 1 else ''} | "
            f"{fmt_spread(row['publish_p50_ms'], 2)} | one INSERT per transaction, same writers "
            f"{fmt_spread(row['bare_insert_p50_ms'], 2)} | {fmt_spread(row['ratio'], 2)} | - | - |"
        )
    fan = extra.get("fan_out")
    if fan:
        lines.append(
            f"| one event to {fan['endpoints']:,.0f} endpoints: commit → first / median / last "
            f"arrival, ms ({fan['arrived']:,.0f} arrived, {fmt(fan.get('per_s', nan))}/s) | "
            f"{fmt(fan.get('first_ms', nan))} / {fmt(fan.get('median_ms', nan))} / "
            f"{fmt(fan.get('last_ms', nan))} | - | - | - | - |"
        )
    api = extra.get("api")
    if api:
        lines += api_lines(api)
    recovery = extra.get("recovery")
    if recovery:
        rf = recovery["figures"]
        lines.append(
            f"| healthy commit→arrival p99 ms during a recovery of {recovery['deliveries']:,} "
            f"(healthy {fmt(recovery['per_second'])}/s, replays "
            f"{fmt_spread(rf['replays_per_s'])}/s) | {fmt_spread(rf['recovery_p99_ms'])} | same "
            f"traffic without the recovery {fmt_spread(rf['baseline_p99_ms'])} | "
            f"{fmt_spread(r.get('recovery_healthy_p99_vs_baseline'), 2)} | - | - |"
        )
    counts = []
    for name in (
        "product_drain",
        "product_paced",
        "product_blackhole_drain",
        "product_blackhole_paced",
        "naive_drain",
        "naive_paced",
    ):
        if name in f:
            fig = f[name]
            lost = fig.get("lost", {}).get("max", float("nan"))
            never = fig.get("never_attempted", fig.get("arrived_not_stored", {})).get(
                "max", float("nan")
            )
            counts.append(
                f"{name} {fmt(lost, 0)} lost / {fmt(never, 0)} "
                f"{'never attempted' if name.startswith('product') else 'not stored'}"
            )
    lines += [
        "",
        "Loss accounting, worst run: " + "; ".join(counts) + ".",
        f"Receiver CPU per request: {fmt_spread(g('raw', 'receiver_cpu_us_per_request'))} µs "
        "(the fast receiver is not the bottleneck).",
    ]
    lines += cost_lines(f)
    if results["notes"]:
        lines += ["", "Notes from the runs:", ""] + [f"- {n}" for n in results["notes"]]
    lines.append("")
    return "\n".join(lines)


def api_lines(api: dict[str, Any]) -> list[str]:
    """The HTTP API's rows (bench.api_bench): hello, FastAPI's own ceiling, the list pages."""
    from bench.report import fmt, fmt_spread

    def median(key: str) -> float:
        return float(api.get(key, {}).get("median", float("nan")))

    hello_rate = fmt_spread(api.get("hello_per_s"))
    hello = f"hello {hello_rate}"
    lines = [f"| API: a bare uvicorn hello route, requests/s | {hello_rate} | - | - | - | - |"]
    for kind, label in (("sync", "def"), ("async", "async def")):
        lines.append(
            f"| API: an empty FastAPI `{label}` route of the list's shape, requests/s | "
            f"{fmt_spread(api.get(f'framework_{kind}_per_s'))} | {hello} | "
            f"{fmt(median(f'framework_{kind}_per_s') / median('hello_per_s'), 3)} | - | - |"
        )
    sizes = api.get("sizes", {})
    for route, shape in (("list", "limit=100"), ("filtered", "endpoint and status")):
        lines += [
            f"| API {route} page ({shape}), requests/s; p50 / p99 ms at peak; p99 ms at half "
            f"of peak | {fmt_spread(api.get(f'{route}_per_s'))}; "
            f"{fmt(median(f'{route}_p50_ms'))} / {fmt(median(f'{route}_p99_ms'))}; "
            f"{fmt_spread(api.get(f'{route}_half_p99_ms'))} | {hello} | "
            f"{fmt(median(f'{route}_per_s') / median('hello_per_s'), 3)} | - | - |",
            f"| API {route} page ms, {sizes.get('large', 0):,} attempts stored | "
            f"{fmt_spread(api.get(f'{route}_page_large_ms'), 2)} | same with "
            f"{sizes.get('small', 0):,} {fmt_spread(api.get(f'{route}_page_small_ms'), 2)} | "
            f"{fmt(median(f'{route}_page_large_ms') / median(f'{route}_page_small_ms'), 2)} "
            "| - | - |",
        ]
    return lines


COSTS = (
    ("worker CPU, µs", "worker_cpu_us_per_delivery"),
    ("dispatcher CPU, µs", "dispatcher_cpu_us_per_delivery"),
    ("Postgres CPU (backends serving worker and dispatcher), µs", "pg_cpu_us_per_delivery"),
    ("WAL bytes, dispatch to recorded", "wal_bytes_per_delivery"),
    ("WAL bytes of publish(), per event", "publish_wal_bytes_per_event"),
    ("broker bytes into Redis", "broker_in_bytes_per_delivery"),
    ("broker bytes out of Redis", "broker_out_bytes_per_delivery"),
)


def cost_lines(f: dict[str, Any]) -> list[str]:
    """Per-delivery costs of the clean drain (bench.costs), the capacity model's inputs."""
    from bench.report import fmt, fmt_spread

    drain = f.get("product_drain", {})
    if "worker_cpu_us_per_delivery" not in drain:
        return []
    lines = [
        "",
        "Per-delivery cost, product backlog drain (bench/costs.py: CPU from the scheduler's "
        "counts; WAL and "
        "broker bytes are server-wide counters, upper bounds on a shared machine):",
        "",
        "| cost per delivery | min / median / max |",
        "|---|---|",
    ]
    lines += [f"| {label} | {fmt_spread(drain.get(key), 1)} |" for label, key in COSTS]
    busy = ", ".join(
        f"{role} {fmt(drain.get(f'{role}_cores_busy', {}).get('median', float('nan')), 2)}"
        for role in ("worker", "dispatcher", "pg")
    )
    lines.append(f"| cores busy during the drain (median) | {busy} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())

"""What one delivery costs each resource: worker CPU, dispatcher CPU, Postgres CPU, WAL bytes
and broker bytes, measured across a product drain (the inputs of the capacity model in
bench/RESULTS.md).

Postgres CPU is the CPU time (user + system, from psutil) of the backend processes that serve
the run's worker and dispatcher, found by matching their TCP connections' local ports to
`pg_stat_activity.client_port`: the harness's own polling and other workloads on the same
server are not counted (pg_stat_statements is not installed here, and it times statements,
not processes). A backend that connected and exited between two snapshots is missed.

WAL bytes (`pg_current_wal_lsn()`) and broker bytes (Redis `INFO stats`) are server-wide
counters: anything else writing to the same Postgres or talking to the same Redis during the
drain is counted too, so on a shared machine they are upper bounds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis
import sqlalchemy as sa

from bench.common import Process, broker_url

PG_PORT = 5432


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children; 0 for one that has gone.

    On Linux, the scheduler's nanosecond count per thread (`_run_seconds`): the clock-tick
    figures (psutil's `cpu_times`, 10 ms steps) read 0 for a dispatcher whose share of a
    60-event drain is under one tick on a fast machine. Elsewhere, `cpu_times`.
    """
    try:
        proc = psutil.Process(pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            ran = _run_seconds(p.pid)
            if ran is None:
                times = p.cpu_times()
                ran = times.user + times.system
            total += ran
        return total
    except psutil.Error:
        return 0.0


def _run_seconds(pid: int) -> float | None:
    """The time the process's live threads have run, from /proc/<pid>/task/*/schedstat (None
    where there is no such file). Threads that ended are no longer counted: the measured
    processes keep theirs (thread pools), and a figure is a difference of two readings."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return None
    total = 0
    for task in tasks.iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def _client_ports(pid: int) -> set[int]:
    """Local ports of a process tree's TCP connections to Postgres."""
    ports: set[int] = set()
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            for conn in p.net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port == PG_PORT:
                    ports.add(conn.laddr.port)
    return ports


def _backends(engine: sa.Engine, ports: set[int]) -> set[int]:
    """Pids of the Postgres backends whose clients sit on ``ports`` of this host."""
    if not ports:
        return set()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT pid FROM pg_stat_activity WHERE client_port = ANY (:ports)"),
            {"ports": sorted(ports)},
        )
        return {int(pid) for (pid,) in rows}


def wal_lsn(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT pg_current_wal_lsn()")).scalar_one())


def wal_bytes_between(engine: sa.Engine, before: str, after: str) -> float:
    with engine.connect() as conn:
        return float(
            conn.execute(
                sa.text("SELECT pg_wal_lsn_diff(CAST(:a AS pg_lsn), CAST(:b AS pg_lsn))"),
                {"a": after, "b": before},
            ).scalar_one()
        )


def _broker_bytes() -> tuple[int, int]:
    """Redis's total network bytes in and out since it started."""
    client = redis.Redis.from_url(broker_url())
    try:
        stats = client.info("stats")
    finally:
        client.close()
    return int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])


@dataclass
class CostMeter:
    """Snapshots before and after a drain; `per_delivery()` divides the differences.

    Processes are added once they are ready (their start-up imports are not the delivery's
    cost); the CPU they and their Postgres backends had at that moment is subtracted.
    """

    engine: sa.Engine
    processes: dict[str, Process] = field(default_factory=dict)
    cpu_at_start: dict[int, float] = field(default_factory=dict)
    wal_before: str = ""
    broker_before: tuple[int, int] = (0, 0)

    def add(self, role: str, process: Process) -> None:
        self.processes[role] = process
        self.cpu_at_start[process.pid] = _cpu_seconds(process.pid)
        for backend in self._backends_of(process):
            self.cpu_at_start.setdefault(backend, _cpu_seconds(backend))

    def start(self) -> None:
        """The server-wide counters; call just before the drain begins."""
        self.wal_before = wal_lsn(self.engine)
        self.broker_before = _broker_bytes()

    def _backends_of(self, process: Process) -> set[int]:
        return _backends(self.engine, _client_ports(process.pid))

    def _used(self, pid: int) -> float:
        return max(0.0, _cpu_seconds(pid) - self.cpu_at_start.get(pid, 0.0))

    def per_delivery(self, deliveries: int, wall_seconds: float) -> dict[str, float]:
        """Every cost divided by ``deliveries``; call before the processes stop."""
        wal = wal_bytes_between(self.engine, self.wal_before, wal_lsn(self.engine))
        net_in, net_out = _broker_bytes()
        backends: set[int] = set()
        out: dict[str, float] = {}
        n = max(1, deliveries)
        for role, process in self.processes.items():
            backends |= self._backends_of(process)
            cpu = self._used(process.pid)
            out[f"{role}_cpu_us_per_delivery"] = cpu / n * 1e6
            out[f"{role}_cores_busy"] = cpu / wall_seconds if wall_seconds > 0 else float("nan")
        pg_cpu = sum(self._used(pid) for pid in backends)
        out.update(
            {
                "pg_cpu_us_per_delivery": pg_cpu / n * 1e6,
                "pg_cores_busy": pg_cpu / wall_seconds if wall_seconds > 0 else float("nan"),
                "pg_backends": float(len(backends)),
                "wal_bytes_per_delivery": wal / n,
                "broker_in_bytes_per_delivery": (net_in - self.broker_before[0]) / n,
                "broker_out_bytes_per_delivery": (net_out - self.broker_before[1]) / n,
                "drain_seconds": wall_seconds,
            }
        )
        return out


__all__ = ["CostMeter", "wal_bytes_between", "wal_lsn"]

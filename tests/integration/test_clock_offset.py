"""A machine whose clock is off from the database's by more than 1 s is found out: `webhooks
doctor` fails (in-process and as a real command), dispatchers and workers log a warning.

This machine's clock is moved with freezegun (ticking, so time still passes); the database
keeps the real time.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine

from webhooks import clock
from webhooks.cli import main
from webhooks.cli.doctor import run_checks
from webhooks.clock_offset import measure_offset
from webhooks.heartbeats import forget
from webhooks.settings import Settings
from workers.app import app as celery_app
from workers.clock_watch import ClockWatch
from workers.dispatcher import Dispatcher

SKEW = timedelta(seconds=5)


def test_the_offset_is_measured_against_the_database_clock(engine: Engine) -> None:
    with engine.connect() as conn:
        assert abs(measure_offset(conn).offset) < timedelta(seconds=1)
        ahead = measure_offset(conn, now=lambda: clock.now() + SKEW)
    assert abs(ahead.offset - SKEW) < timedelta(milliseconds=500)
    assert not ahead.is_within()


def test_doctor_fails_the_clock_check_of_a_machine_5s_ahead(
    settings: Settings, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.MonkeyPatch.context() as patch, freeze_time(clock.now() + SKEW, tick=True):
        for name, value in env.items():
            patch.setenv(name, value)
        [check] = [c for c in run_checks(settings) if c.name == "clock"]
        with pytest.raises(SystemExit) as exited:
            main(["doctor"])
    assert not check.ok and "ahead of the database's" in check.detail
    assert "NTP" in check.detail
    assert exited.value.code == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("FAIL  clock") for line in lines)
    assert "clock" in lines[-1]


def test_doctor_as_a_command_fails_on_a_machine_5s_behind(env: dict[str, str]) -> None:
    # The command's own entry point, in a process of its own whose clock runs 5 s late.
    script = (
        "import sys; from datetime import timedelta; from freezegun import freeze_time; "
        "from webhooks import clock; from webhooks.cli import main; "
        "sys.exit(freeze_time(clock.now() - timedelta(seconds=5), tick=True)"
        "(lambda: main(['doctor', '--json']))())"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert '"name": "clock",\n      "ok": false' in result.stdout
    assert "behind the database's" in result.stdout


def test_a_dispatcher_and_a_worker_log_a_warning_when_their_clock_is_off(
    settings: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = Dispatcher(settings, celery_app)
    with caplog.at_level(logging.WARNING), freeze_time(clock.now() + SKEW, tick=True):
        try:
            dispatcher.heartbeat()
        finally:
            with engine.begin() as conn:
                forget(conn, settings, dispatcher.id)
            dispatcher.engine.dispose()
        ClockWatch().check(engine)
    warnings = [r for r in caplog.records if r.getMessage() == "clock.offset_too_large"]
    assert [r.name for r in warnings] == ["webhooks.dispatcher", "webhooks.worker"]
    assert all(4 < r.offset_seconds < 6 for r in warnings)  # type: ignore[attr-defined]


def test_clocks_in_step_give_no_warning(
    settings: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        ClockWatch().check(engine)
    assert not [r for r in caplog.records if r.getMessage() == "clock.offset_too_large"]

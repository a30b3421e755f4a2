"""`python -m workers.flower`: Flower as the Procfile runs it, never open without a password.

Flower is unauthenticated by default, and it shows every task, its arguments and results, and
can revoke tasks and shut workers down. So this entry point refuses to start (one ``error:``
line on stderr, exit 1) unless ``FLOWER_BASIC_AUTH`` holds ``user:password`` (several:
``a:pw1,b:pw2``); only ``webhooks dev`` (``WEBHOOKS_DEV=true``) may run it without, and then
it listens on 127.0.0.1 unless told otherwise. When the settings are sound it replaces itself
(``exec``) with ``celery -A workers flower``, so a supervisor (honcho, systemd, Kubernetes)
signals Flower itself.

The password is not put on Flower's command line, where every user of the machine could read
it (``ps``, ``/proc/<pid>/cmdline``): Flower reads ``FLOWER_BASIC_AUTH`` from its environment
itself, and the environment of a process is readable only by its owner.

Settings (environment):
- ``FLOWER_BASIC_AUTH``: ``user:password[,user:password…]``; required outside development.
- ``PORT``: the port to listen on (default 5555); ``FLOWER_PORT`` wins when both are set, so
  one box running the Procfile under honcho (which sets ``PORT`` per process) can pin it.
- ``FLOWER_ADDRESS``: the address to listen on (default ``0.0.0.0``, or ``127.0.0.1`` in
  development without a password).
- ``CELERY_BROKER_URL`` and the other webhooks settings: read by the Celery app, as for the
  worker; they are checked here first so a typo fails with one line, not a traceback.

Flower's ``/metrics`` and ``/healthcheck`` skip authentication (Flower's design): keep them
on an internal network.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from webhooks.errors import ConfigurationError
from webhooks.sealing import plaintext_warning
from webhooks.settings import Settings

__all__ = ["SETTINGS", "FlowerConfig", "build_command", "main", "read_config"]

DEFAULT_PORT = 5555
PUBLIC_ADDRESS = "0.0.0.0"  # noqa: S104 - Flower serves operators from other machines; auth is required
LOOPBACK_ADDRESS = "127.0.0.1"
# Passwords copied from deploy/webhooks.env.example or the manifests unchanged.
PLACEHOLDER_PASSWORDS = frozenset({"CHANGE_ME", "change_me", "changeme", "password"})
# The environment variables this module reads itself (the rest go through `Settings`).
SETTINGS = ("FLOWER_PORT", "PORT", "FLOWER_ADDRESS")


@dataclass(frozen=True)
class FlowerConfig:
    """How Flower is to be started, and the warning to print first, if any."""

    port: int
    address: str
    is_authenticated: bool
    warning: str | None = None


def read_config(environ: Mapping[str, str]) -> FlowerConfig:
    """Check Flower's settings; raise `ConfigurationError` with the fix when they are unsafe.

    Args:
        environ: the environment Flower will run with.
    """
    settings = Settings.from_env(environ)  # every webhooks setting, as the app reads them
    is_dev = settings.is_dev
    basic_auth = (settings.flower_basic_auth or "").strip()
    if basic_auth:
        check_basic_auth(basic_auth)
    elif not is_dev:
        raise ConfigurationError(
            "FLOWER_BASIC_AUTH is not set; Flower shows every delivery and can stop workers, "
            "so it needs a password: set FLOWER_BASIC_AUTH=user:password"
        )
    port = parse_port(environ)
    default_address = PUBLIC_ADDRESS if basic_auth else LOOPBACK_ADDRESS
    address = environ.get("FLOWER_ADDRESS", "").strip() or default_address
    return FlowerConfig(
        port=port,
        address=address,
        is_authenticated=bool(basic_auth),
        warning=plaintext_warning(settings.secret_keys, is_dev=is_dev),
    )


def check_basic_auth(value: str) -> None:
    """Insist on ``user:password`` pairs (comma-separated), each with a real password."""
    for entry in value.split(","):
        user, colon, password = entry.partition(":")
        if not colon or not user.strip() or not password:
            raise ConfigurationError(
                "FLOWER_BASIC_AUTH must be user:password (several: a:pw1,b:pw2; no commas in "
                "passwords); got an entry without a user or a password"
            )
        if password in PLACEHOLDER_PASSWORDS:
            raise ConfigurationError(
                f"FLOWER_BASIC_AUTH for user {user!r} still has the example password; "
                "choose a real one"
            )


def parse_port(environ: Mapping[str, str]) -> int:
    """``FLOWER_PORT``, else ``PORT``, else 5555."""
    for name in ("FLOWER_PORT", "PORT"):
        text = environ.get(name, "").strip()
        if text:
            if not text.isdigit() or not 0 < int(text) < 65536:
                raise ConfigurationError(f"{name}={text!r} is not a TCP port (1-65535)")
            return int(text)
    return DEFAULT_PORT


def build_command(config: FlowerConfig, extra_args: Sequence[str] = ()) -> list[str]:
    """The ``celery -A workers flower`` command line, with this interpreter's Celery.

    The password is not on it: Flower reads ``FLOWER_BASIC_AUTH`` from the environment.
    """
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers",
        "flower",
        f"--port={config.port}",
        f"--address={config.address}",
        *extra_args,
    ]


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="python -m workers.flower",
        description=(
            "Start Flower for the webhooks workers, with the password from FLOWER_BASIC_AUTH "
            "(user:password). Refuses to start without it unless WEBHOOKS_DEV=true. "
            "Listens on FLOWER_PORT or PORT (default 5555) and FLOWER_ADDRESS "
            "(default 0.0.0.0). Other arguments are passed to Flower (e.g. --persistent=True)."
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Check the settings, then exec Flower; return 1 (after one ``error:`` line) if unsafe."""
    args = list(sys.argv[1:] if argv is None else argv)
    _, extra_args = _parser().parse_known_args(args)
    environ = dict(os.environ)
    try:
        config = read_config(environ)
    except ConfigurationError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return 1
    command = build_command(config, extra_args)
    if config.warning:
        # Flower shows no secret, but it is one of the processes an operator watches start.
        print(f"warning: {config.warning}", file=sys.stderr, flush=True)
    if not config.is_authenticated:
        print(
            f"flower: WEBHOOKS_DEV=true, no password: listening on {config.address} only",
            file=sys.stderr,
            flush=True,
        )
        # Flower would read a stray empty FLOWER_BASIC_AUTH as one empty credential.
        environ.pop("FLOWER_BASIC_AUTH", None)
    else:
        # Flower compares credentials byte for byte: no stray spaces from an env file.
        environ["FLOWER_BASIC_AUTH"] = environ["FLOWER_BASIC_AUTH"].strip()
    sys.stdout.flush()
    os.execve(command[0], command, environ)  # noqa: S606 - our own interpreter, fixed arguments
    return 0  # pragma: no cover - execve does not return


if __name__ == "__main__":
    sys.exit(main())

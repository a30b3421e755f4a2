"""deploy/ checked as far as a machine without Docker or Kubernetes can check it.

Every YAML file parses; every command the Compose file, the Kubernetes manifests (containers
and probes) and the systemd units would run exists here and accepts its arguments (the same
argv plus ``--help`` exits 0, so an unknown flag fails); every environment variable they set
is a setting the code reads; and the choices deploy/README.md promises hold (one image, two
dispatchers, Flower with a password, Redis that keeps its data, the API on ``$PORT`` with its
probes on routes it serves, no root, no liveness probe that fails on a backlog or an outage).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.acceptance.support import ROOT
from tests.support.processes import BIN
from webhooks.api import OPENAPI_URL
from webhooks.settings import Settings
from workers import flower

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
COMPOSE = DEPLOY / "docker-compose.yml"
IMAGE_NAME = "cloudapi-webhooks"
SYSTEMD_BIN = "/opt/webhooks/venv/bin/"
WORKLOADS = ("Deployment", "Job", "StatefulSet", "DaemonSet", "CronJob")
# Variables of the third-party images (postgres), not of our processes.
FOREIGN_IMAGES = ("postgres:", "redis:")


def known_settings() -> set[str]:
    """Every environment variable the code reads: `Settings.from_env` and workers.flower."""
    source = inspect.getsource(Settings.from_env)
    names = set(re.findall(r"[\"']([A-Z][A-Z0-9]*_[A-Z0-9_]+)[\"']", source))
    assert {"DATABASE_URL", "CELERY_BROKER_URL", "WEBHOOKS_DB_SCHEMA"} <= names
    return names | set(flower.SETTINGS)


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    (doc,) = documents(COMPOSE)
    return doc


def compose_services() -> dict[str, dict[str, Any]]:
    """The Compose services that run our image."""
    services: dict[str, dict[str, Any]] = compose()["services"]
    return {
        name: service
        for name, service in services.items()
        if str(service.get("image", "")).startswith(IMAGE_NAME)
    }


def k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in documents(path):
            if "kind" in doc and doc["kind"] != "Kustomization":
                yield path, doc


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a workload (a CronJob keeps it one level deeper)."""
    workload = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    spec: dict[str, Any] = workload["template"]["spec"]
    return spec


def k8s_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload/container, container) of every workload's containers and init containers."""
    for _, obj in k8s_objects():
        if obj["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(obj)
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield f"{obj['metadata']['name']}/{container['name']}", container


def systemd_units() -> dict[str, dict[str, list[str]]]:
    """unit file name -> {"Section.Key": [values]}."""
    units = {}
    for path in sorted(SYSTEMD.glob("*.service")):
        entries: dict[str, list[str]] = {}
        section = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            entries.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
        units[path.name] = entries
    return units


def env_file_names(path: Path) -> list[str]:
    return [
        line.split("=", 1)[0].strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


@dataclass(frozen=True)
class Command:
    where: str
    argv: tuple[str, ...]


def commands() -> list[Command]:
    """Every command line deploy/ runs with our code, deduplicated, with where it is from."""
    found: dict[tuple[str, ...], list[str]] = {}

    def add(where: str, argv: list[str]) -> None:
        found.setdefault(tuple(str(a) for a in argv), []).append(where)

    for name, service in compose_services().items():
        add(f"compose:{name}", service["command"])
    for where, container in k8s_containers():
        add(f"k8s:{where}", container.get("command", []) + container.get("args", []))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            exec_ = container.get(probe, {}).get("exec")
            if exec_:
                add(f"k8s:{where}:{probe}", exec_["command"])
    for unit, entries in systemd_units().items():
        for line in entries.get("Service.ExecStart", []):
            argv = shlex.split(line)
            assert argv[0].startswith(SYSTEMD_BIN), f"{unit}: {argv[0]} is not in the venv"
            add(f"systemd:{unit}", [argv[0].removeprefix(SYSTEMD_BIN), *argv[1:]])
    return [Command(" ".join(wheres), argv) for argv, wheres in found.items()]


def test_every_yaml_file_in_deploy_parses() -> None:
    files = yaml_files()
    assert {COMPOSE, K8S / "kustomization.yaml"} <= set(files)
    for path in files:
        assert documents(path), f"{path} is empty"


def test_deploy_has_compose_dockerfile_systemd_units_and_kubernetes_manifests() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "dispatcher", "worker", "flower", "api"} <= set(
        services
    )
    assert (DEPLOY / "Dockerfile").is_file()
    assert set(systemd_units()) == {
        "webhooks-worker.service",
        "webhooks-dispatcher@.service",
        "webhooks-flower.service",
        "webhooks-api.service",
        "webhooks-prune.service",
    }
    assert (SYSTEMD / "webhooks-prune.timer").is_file()
    kinds = {(obj["kind"], obj["metadata"]["name"]) for _, obj in k8s_objects()}
    assert {
        ("Job", "webhooks-migrate"),
        ("CronJob", "webhooks-prune"),
        ("Deployment", "webhooks-dispatcher"),
        ("Deployment", "webhooks-worker"),
        ("Deployment", "webhooks-flower"),
        ("Service", "webhooks-flower"),
        ("Deployment", "webhooks-api"),
        ("Service", "webhooks-api"),
        ("Secret", "webhooks"),
        ("ConfigMap", "webhooks"),
    } <= kinds


@pytest.mark.parametrize("command", commands(), ids=lambda c: " ".join(c.argv)[:60])
def test_every_deployed_command_exists_and_accepts_its_arguments(
    command: Command, tmp_path: Path
) -> None:
    program, *args = command.argv
    executable = sys.executable if program == "python" else str(BIN / program)
    assert Path(executable).exists(), f"{command.where}: no command {program!r} here"
    result = subprocess.run(
        [executable, *args, "--help"],
        cwd=tmp_path,  # the installed package, not the source tree
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{command.where}: {result.stderr[-1500:]}"
    assert "usage" in result.stdout.lower(), result.stdout[-500:]


def test_every_environment_variable_in_deploy_is_a_setting_the_code_reads() -> None:
    known = known_settings()
    named: dict[str, str] = {}
    for name, service in compose_services().items():
        for variable in service.get("environment", {}):
            named[variable] = f"compose:{name}"
    for path, obj in k8s_objects():
        if obj["kind"] in ("ConfigMap", "Secret"):
            for variable in {**obj.get("data", {}), **obj.get("stringData", {})}:
                named[variable] = str(path.name)
    for where, container in k8s_containers():
        for item in container.get("env", []):
            named[item["name"]] = f"k8s:{where}"
    for unit, entries in systemd_units().items():
        for line in entries.get("Service.Environment", []):
            for pair in shlex.split(line):
                named[pair.split("=", 1)[0]] = unit
    for variable in env_file_names(DEPLOY / "webhooks.env.example"):
        named[variable] = "webhooks.env.example"
    unknown = {variable: where for variable, where in named.items() if variable not in known}
    assert not unknown, f"not settings the code reads: {unknown}"


def test_compose_interpolates_only_variables_its_env_example_defines() -> None:
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    defined = set(env_file_names(DEPLOY / "compose.env.example"))
    assert used == defined


def test_every_webhooks_container_runs_the_same_image_at_the_package_version() -> None:
    tag = version("cloudapi-webhooks")
    images = {str(s["image"]) for s in compose_services().values()}
    assert images == {f"{IMAGE_NAME}:${{WEBHOOKS_VERSION:-{tag}}}"}
    assert all(s["build"]["dockerfile"] == "deploy/Dockerfile" for s in compose_services().values())
    k8s_images = {c["image"] for _, c in k8s_containers()}
    assert k8s_images == {f"{IMAGE_NAME}:{tag}"}
    (kustomization,) = documents(K8S / "kustomization.yaml")
    (image,) = kustomization["images"]
    assert image["name"] == IMAGE_NAME and image["newTag"] == tag


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    (kustomization,) = documents(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml"}


def test_flower_gets_its_password_and_runs_through_the_refusing_entry_point() -> None:
    service = compose()["services"]["flower"]
    assert service["command"] == ["python", "-m", "workers.flower"]
    assert "FLOWER_BASIC_AUTH" in service["environment"]
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])
    (secret,) = [obj for _, obj in k8s_objects() if obj["kind"] == "Secret"]
    assert "FLOWER_BASIC_AUTH" in secret["stringData"]
    (container,) = [c for where, c in k8s_containers() if where.startswith("webhooks-flower/")]
    assert container["command"] == ["python", "-m", "workers.flower"]
    assert {"secretRef": {"name": "webhooks"}} in container["envFrom"]
    unit = systemd_units()["webhooks-flower.service"]
    assert unit["Service.ExecStart"] == [f"{SYSTEMD_BIN}python -m workers.flower"]
    assert "FLOWER_BASIC_AUTH" in env_file_names(DEPLOY / "webhooks.env.example")
    assert "python -m workers.flower" in (ROOT / "Procfile").read_text()


def test_redis_keeps_its_data_and_never_evicts_messages() -> None:
    command = " ".join(compose()["services"]["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command


def test_two_dispatchers_run_everywhere() -> None:
    assert compose()["services"]["dispatcher"]["deploy"]["replicas"] == 2
    (dispatcher,) = [
        obj for _, obj in k8s_objects() if obj["metadata"]["name"] == "webhooks-dispatcher"
    ]
    assert dispatcher["spec"]["replicas"] == 2
    assert "webhooks-dispatcher@.service" in systemd_units()  # @1 and @2


def test_dispatchers_workers_and_the_api_wait_for_the_migration() -> None:
    services = compose()["services"]
    assert services["migrate"]["command"] == ["webhooks", "migrate"]
    for name in ("dispatcher", "worker", "api"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully"


def test_probes_use_the_doctor_for_readiness_and_never_fail_liveness_on_a_backlog() -> None:
    checked = 0
    for where, container in k8s_containers():
        ports = {p["name"] for p in container.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = container.get(probe)
            if not spec:
                continue
            if "httpGet" in spec:
                assert spec["httpGet"]["port"] in ports, f"{where} {probe}: no such port"
            argv = spec.get("exec", {}).get("command", [])
            if argv[:2] == ["webhooks", "doctor"]:
                assert probe != "livenessProbe", f"{where}: the doctor checks shared services"
                backlog = argv[argv.index("--backlog-age") + 1]
                assert backlog == "72h", f"{where}: a backlog must not stall a rollout"
                checked += 1
    assert checked >= 2  # dispatcher and worker readiness


def test_nothing_runs_as_root() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN pip install \.", dockerfile, re.MULTILINE)
    (user,) = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert not user.startswith(("root", "0:", "0 ")) and user != "0"
    for _, obj in k8s_objects():
        if obj["kind"] in WORKLOADS:
            assert pod_spec(obj)["securityContext"]["runAsNonRoot"] is True
    for unit, entries in systemd_units().items():
        assert entries["Service.User"] == ["webhooks"], unit
        assert entries["Service.EnvironmentFile"] == ["/etc/webhooks/webhooks.env"], unit
        if unit != "webhooks-prune.service":  # started by webhooks-prune.timer
            assert entries["Install.WantedBy"] == ["multi-user.target"], unit


def api_paths() -> set[str]:
    """The paths the API serves without a key (probes must use one of these)."""
    spec = json.loads(
        subprocess.run(
            [sys.executable, "-c", API_PATHS],
            env={**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    return {OPENAPI_URL} | {
        path for path, ops in spec["paths"].items() if ops.get("get", {}).get("security") == []
    }


# The document, built without a database (nothing is asked of it until a request comes).
API_PATHS = (
    "import json; from webhooks.api import create_app; print(json.dumps(create_app().openapi()))"
)


def test_the_api_runs_everywhere_on_port_with_probes_on_its_health_routes() -> None:
    assert "api: webhooks api" in (ROOT / "Procfile").read_text()
    served = api_paths()
    assert {"/v1/health", "/v1/health/live"} <= served
    # Compose: PORT set, published on the host's loopback only, healthy on /v1/health.
    service = compose()["services"]["api"]
    assert service["command"] == ["webhooks", "api"]
    port = service["environment"]["PORT"]
    assert service["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert f"127.0.0.1:{port}/v1/health'" in " ".join(service["healthcheck"]["test"])
    assert "WEBHOOKS_API_TRUSTED_PROXIES" in service["environment"]
    # systemd: PORT in the unit, on the loopback behind the machine's TLS proxy.
    unit = systemd_units()["webhooks-api.service"]
    assert unit["Service.ExecStart"] == [f"{SYSTEMD_BIN}webhooks api --host 127.0.0.1"]
    assert "PORT=8000" in unit["Service.Environment"]
    # Kubernetes: PORT is the port the probes and the Service use; readiness asks the
    # database (/v1/health), liveness does not (/v1/health/live): an outage restarts nothing.
    (container,) = [c for where, c in k8s_containers() if where.startswith("webhooks-api/")]
    assert container["command"] == ["webhooks", "api"]
    env = {item["name"]: item["value"] for item in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(env["PORT"]) == ports["http"]
    probes = {name: container[name]["httpGet"] for name in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"] == {"path": "/v1/health", "port": "http"}
    assert probes["livenessProbe"] == {"path": "/v1/health/live", "port": "http"}
    assert {probe["path"] for probe in probes.values()} <= served
    (service_obj,) = [
        obj
        for _, obj in k8s_objects()
        if obj["kind"] == "Service" and obj["metadata"]["name"] == "webhooks-api"
    ]
    assert service_obj["spec"]["type"] == "ClusterIP"
    assert service_obj["spec"]["ports"][0]["targetPort"] == "http"
    assert service_obj["spec"]["selector"] == {"app.kubernetes.io/name": "webhooks-api"}


# -- real validators -------------------------------------------------------------------------
# The oldest Kubernetes the manifests support: every field they use is in its API schemas
# (kubernetes-validate bundles the schemas of 1.25 to 1.37; 1.29 is the oldest minor still in
# the large providers' extended support when this was written). deploy/README.md says so too.
OLDEST_KUBERNETES = "1.29"
# The documented systemd install (deploy/README.md): a venv at /opt/webhooks/venv, the
# environment file, the units in /etc/systemd/system.
INSTALL_VENV = Path(SYSTEMD_BIN).parent
UNIT_PATH = Path("/etc/systemd/system")
# This machine's own units (sysinit.target, …), which verify needs beside ours.
SYSTEM_UNITS = Path("/lib/systemd/system")


def kubernetes_errors(obj: dict[str, Any]) -> str | None:
    """Why ``obj`` fails strict validation against the oldest Kubernetes (None: it passes)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, OLDEST_KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as error:
        return f"{'/'.join(str(p) for p in error.path)}: {error.message}"
    return None


def test_kubernetes_manifests_validate_strictly_against_the_oldest_supported_version() -> None:
    objects = list(k8s_objects())
    assert {obj["kind"] for _, obj in objects} >= {"Deployment", "Job", "CronJob", "Service"}
    errors = {
        f"{path.name}:{obj['kind']}/{obj['metadata']['name']}": kubernetes_errors(obj)
        for path, obj in objects
    }
    assert not {k: v for k, v in errors.items() if v}, errors


def test_the_kubernetes_validator_rejects_a_misspelt_field_and_a_wrong_type() -> None:
    (deployment,) = [
        obj for _, obj in k8s_objects() if obj["metadata"]["name"] == "webhooks-worker"
    ]
    misspelt = json.loads(json.dumps(deployment))
    misspelt["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    wrong_type = json.loads(json.dumps(deployment))
    wrong_type["spec"]["replicas"] = "two"

    assert "imagePullPolice" in (kubernetes_errors(misspelt) or "")
    assert "'two' is not of type 'integer'" in (kubernetes_errors(wrong_type) or "")


def documented_install(root: Path, units: Path = SYSTEMD) -> Path:
    """The systemd install of deploy/README.md under ``root``: the venv's programs the units
    run (copied from this checkout's venv, the same `pip install .`), the environment file, the
    units, and this machine's own systemd units (``sysinit.target``, …) beside them."""
    bin_dir = root / INSTALL_VENV.relative_to("/") / "bin"
    bin_dir.mkdir(parents=True)
    for unit in systemd_units().values():
        for line in unit.get("Service.ExecStart", []):
            program = Path(shlex.split(line)[0]).name
            assert (BIN / program).exists(), f"`pip install .` installs no {program}"
            shutil.copy(BIN / program, bin_dir / program)
    env_file = root / "etc/webhooks/webhooks.env"
    env_file.parent.mkdir(parents=True)
    shutil.copy(DEPLOY / "webhooks.env.example", env_file)
    (root / "opt/webhooks").mkdir(parents=True, exist_ok=True)
    installed = root / UNIT_PATH.relative_to("/")
    installed.mkdir(parents=True)
    for unit_file in units.glob("webhooks-*"):
        shutil.copy(unit_file, installed)
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/systemd/system").symlink_to(SYSTEM_UNITS)
    return installed


def systemd_verify(root: Path, installed: Path) -> str:
    """`systemd-analyze verify` of every unit under ``root``: its complaints ('' when none).

    It exits 0 on an unknown key or a value it cannot parse and only warns: any output fails.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None or not SYSTEM_UNITS.is_dir():
        pytest.skip("systemd-analyze (and systemd's own units) are not on this machine")
    units = sorted(str(p) for p in installed.iterdir())
    result = subprocess.run(
        [analyze, "verify", "--man=no", f"--root={root}", *units],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return (result.stdout + result.stderr).strip() or ("" if result.returncode == 0 else "failed")


def test_systemd_units_verify_in_the_documented_install(tmp_path: Path) -> None:
    # The README's install copies every unit, the timer included, as `documented_install` does.
    assert "cp deploy/systemd/webhooks-* /etc/systemd/system/" in (DEPLOY / "README.md").read_text()
    installed = documented_install(tmp_path)
    assert {p.name for p in installed.iterdir()} == {p.name for p in SYSTEMD.iterdir()}
    assert systemd_verify(tmp_path, installed) == ""
    # Every file a unit names is there in that install.
    named = {
        path
        for unit in systemd_units().values()
        for key in ("Unit.Documentation", "Service.EnvironmentFile", "Service.WorkingDirectory")
        for value in unit.get(key, [])
        for path in re.findall(r"(?:file://)?(/[^\s]+)", value)
    }
    missing = sorted(p for p in named if not (tmp_path / p.lstrip("/")).exists())
    assert not missing, f"the units name paths the documented install does not create: {missing}"


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (("Restart=always", "Restart=sometimes"), "restart specifier"),
        (("TimeoutStopSec=", "TimeoutStopSecs="), "Unknown key"),
        ((SYSTEMD_BIN + "webhooks", SYSTEMD_BIN + "webhookz"), "is not executable"),
    ],
)
def test_systemd_verify_rejects_a_broken_unit(
    tmp_path: Path, change: tuple[str, str], complaint: str
) -> None:
    broken = tmp_path / "units"
    shutil.copytree(SYSTEMD, broken)
    unit = broken / "webhooks-api.service"
    assert change[0] in unit.read_text()
    unit.write_text(unit.read_text().replace(change[0], change[1]))
    root = tmp_path / "root"
    (root / "opt").mkdir(parents=True)

    assert complaint in systemd_verify(root, documented_install(root, broken))


def compose_errors(path: Path) -> str:
    """check-jsonschema's verdict on ``path`` against the Compose Specification's schema
    (vendored in check-jsonschema as ``vendor.compose-spec``, Apache-2.0): '' when valid."""
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return "" if result.returncode == 0 else result.stdout + result.stderr


def test_the_compose_file_matches_the_compose_specification() -> None:
    assert compose_errors(COMPOSE) == ""


def test_the_compose_check_rejects_a_misspelt_key(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["worker"]["restart_policy"] = "always"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))

    assert "restart_policy" in compose_errors(path)

"""The container image, built and run for real with podman: exit codes, JSON logs, signals as
PID 1, non-root and read-only root filesystem, and the "extend it as a base image" recipe.

The image is built once per session on a Debian bookworm base made with debootstrap (no registry
is reachable here; the base stays in podman storage, so later runs reuse it). Set
MIGRATION_TEST_BASE_IMAGE=python:3.11-slim-bookworm where a registry is reachable.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from runner.errors import ExitCode
from tests.support import TCP_POSTGRES_HINT
from tests.support_tools import (
    PODMAN_RUN,
    REPO,
    build_image,
    ensure_base_image,
    helm,
    missing,
    podman,
    require_tool,
    run,
)

# The first test to run builds the image (minutes on a cold cache); later ones reuse it.
pytestmark = [pytest.mark.image, pytest.mark.slow, pytest.mark.timeout(1800)]

RUNNER_IMAGE = "localhost/migration-runner:test"
APP_IMAGE = "localhost/migration-runner-example-app:test"
IMAGE_UID = "10001"
#: A writable /tmp on the read-only root (the path inside the container, not on this machine).
CONTAINER_TMPFS = "/tmp:rw,size=64m"  # noqa: S108
#: The head of the example project (examples/migrations/versions).
EXAMPLE_REVISIONS = 4


@pytest.fixture(scope="session")
def pm() -> list[str]:
    return podman()


@pytest.fixture(scope="session")
def runner_image(pm: list[str]) -> str:
    if not (REPO / "README.md").exists():
        missing(
            "README.md is missing (pyproject.toml's `readme` needs it to build the wheel)",
            "git checkout README.md",
        )
    base = ensure_base_image(pm)
    started = time.monotonic()
    build_image(pm, RUNNER_IMAGE, build_args={"PYTHON_IMAGE": base})
    print(f"\nbuilt {RUNNER_IMAGE} on {base} in {time.monotonic() - started:.0f} s")
    return RUNNER_IMAGE


@pytest.fixture(scope="session")
def app_image(pm: list[str], runner_image: str) -> str:
    """The documented recipe: FROM the runner image, COPY alembic.ini and migrations/."""
    build_image(
        pm,
        APP_IMAGE,
        dockerfile="deploy/Dockerfile.example-app",
        build_args={"RUNNER_IMAGE": runner_image},
    )
    return APP_IMAGE


@pytest.fixture
def db_url(pg_url: str) -> str:
    """The test database as seen from a `--network host` container (TCP only)."""
    url = make_url(pg_url)
    if not url.host or url.query.get("host"):
        missing(
            "the test PostgreSQL is reached through a Unix socket, the image tests need TCP",
            TCP_POSTGRES_HINT,
        )
    return pg_url


def events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def finished(stderr: str) -> dict[str, Any]:
    found = [e for e in events(stderr) if e.get("event") == "run_finished"]
    assert len(found) == 1, f"expected one run_finished event on stderr:\n{stderr[-3000:]}"
    return found[0]


def podman_run(
    pm: list[str],
    image: str,
    *args: str,
    env: dict[str, str] | None = None,
    options: tuple[str, ...] = (),
    timeout: float = 180,
) -> Any:
    """`podman run` the way the docs recommend: read-only root, tmpfs /tmp, host network."""
    cmd = [*pm, "run", "--rm", *PODMAN_RUN, "--network", "host", "--read-only"]
    cmd += ["--tmpfs", CONTAINER_TMPFS, *options]
    for key, value in (env or {}).items():
        cmd += ["--env", f"{key}={value}"]
    return run([*cmd, image, *args], timeout=timeout, check=False)


def test_image_metadata_entrypoint_cmd_user_workdir(pm: list[str], runner_image: str) -> None:
    (info,) = json.loads(run([*pm, "image", "inspect", runner_image]).stdout)
    config = info["Config"]
    assert config["Entrypoint"] == ["migration-runner"]
    assert config["Cmd"] == ["upgrade"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}", "a fixed numeric non-root UID"
    assert config["WorkingDir"] == "/app"
    assert config.get("StopSignal", "SIGTERM") == "SIGTERM"


def test_image_size_is_reported_and_bounded(
    pm: list[str], runner_image: str, record_property: Any
) -> None:
    size = int(run([*pm, "image", "inspect", "--format", "{{.Size}}", runner_image]).stdout)
    base = run([*pm, "image", "inspect", "--format", "{{.Size}}", ensure_base_image(pm)]).stdout
    added = size - int(base)
    record_property("image_size_bytes", size)
    print(f"\nimage {runner_image}: {size / 1e6:.0f} MB total, {added / 1e6:.0f} MB over its base")
    # The runtime stage adds only the venv (dependencies + runner); keep it that way.
    assert added < 250e6, f"the runtime layer grew to {added / 1e6:.0f} MB"


def test_runtime_stage_holds_no_build_tools_and_keeps_the_kubernetes_client(
    pm: list[str], runner_image: str
) -> None:
    probe = (
        "import importlib.util, kubernetes.client, kubernetes.config, runner.cli;"
        "print(importlib.util.find_spec('pip') is None, importlib.util.find_spec('setuptools')"
        " is None)"
    )
    proc = podman_run(pm, runner_image, "-c", probe, options=("--entrypoint", "python3"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"], "pip/setuptools left in the runtime venv"


@pytest.mark.timeout(600)
def test_upgrade_in_derived_image_migrates_postgres_and_exits_0(
    pm: list[str], app_image: str, db_url: str
) -> None:
    env = {"MIGRATION_DATABASE_URL": db_url}
    first = podman_run(pm, app_image, env=env)  # default CMD: upgrade
    assert first.returncode == 0, first.stderr[-3000:]
    summary = finished(first.stderr)
    assert summary["exit_code"] == 0 and summary["outcome"] == "success"
    assert summary["applied"] == EXAMPLE_REVISIONS
    assert first.stdout == "", "logs go to stderr; stdout is for command output"

    again = podman_run(pm, app_image, "upgrade", env=env)
    assert again.returncode == 0
    assert finished(again.stderr)["applied"] == 0, "a second run has nothing to do"

    check = podman_run(pm, app_image, "check", env=env)
    assert check.returncode == 0, check.stderr[-2000:]


@pytest.mark.timeout(600)
def test_exit_codes_come_out_of_the_container_unchanged(
    pm: list[str], runner_image: str, app_image: str, db_url: str
) -> None:
    no_url = podman_run(pm, app_image)
    assert no_url.returncode == ExitCode.CONFIG, no_url.stderr[-2000:]
    assert finished(no_url.stderr)["exit_code"] == ExitCode.CONFIG

    pending = podman_run(pm, app_image, "check", env={"MIGRATION_DATABASE_URL": db_url})
    assert pending.returncode == ExitCode.PENDING, pending.stderr[-2000:]

    # The bare runner image has no alembic.ini: a configuration error, not a crash.
    no_project = podman_run(pm, runner_image, env={"MIGRATION_DATABASE_URL": db_url})
    assert no_project.returncode == ExitCode.CONFIG, no_project.stderr[-2000:]


@pytest.mark.timeout(600)
def test_runs_under_an_arbitrary_numeric_uid_with_read_only_root(
    pm: list[str], app_image: str, db_url: str
) -> None:
    """OpenShift-style random UID (group 0) and a read-only root: nothing writes outside /tmp."""
    proc = podman_run(
        pm,
        app_image,
        "upgrade",
        env={"MIGRATION_DATABASE_URL": db_url},
        options=("--user", "123456:0", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert finished(proc.stderr)["applied"] == EXAMPLE_REVISIONS


@pytest.fixture
def container_name(pm: list[str]) -> Iterator[str]:
    name = f"mr-test-{uuid.uuid4().hex[:10]}"
    yield name
    run([*pm, "rm", "--force", "--ignore", name], check=False, timeout=120)


@pytest.mark.timeout(600)
def test_sigterm_reaches_the_runner_as_pid_1_and_exits_143(
    pm: list[str], app_image: str, db_url: str, container_name: str
) -> None:
    """`wait` on a database that is not at head blocks; `podman stop` sends SIGTERM to PID 1
    (the runner itself, no init wrapper) and the runner's own exit code 143 comes out."""
    run(
        [
            *pm,
            "run",
            "--detach",
            "--name",
            container_name,
            *PODMAN_RUN,
            "--network",
            "host",
            "--read-only",
            "--tmpfs",
            CONTAINER_TMPFS,
            "--env",
            f"MIGRATION_DATABASE_URL={db_url}",
            "--env",
            "MIGRATION_WAIT_TIMEOUT=600",
            app_image,
            "wait",
        ]
    )
    deadline = time.monotonic() + 60
    logs = ""
    while time.monotonic() < deadline:
        logs = run([*pm, "logs", container_name], check=False).stderr
        if logs.strip():
            break
        time.sleep(0.5)
    assert logs.strip(), "the runner logged nothing within 60 s"
    time.sleep(1)
    pid1 = run([*pm, "top", container_name, "pid", "args"], check=False).stdout
    assert "migration-runner" in pid1, pid1

    run([*pm, "stop", "--time", "20", container_name], timeout=120)
    code = run([*pm, "inspect", "--format", "{{.State.ExitCode}}", container_name]).stdout
    logs = run([*pm, "logs", container_name]).stderr
    assert int(code) == ExitCode.SIGTERM, logs[-3000:]
    assert finished(logs)["exit_code"] == ExitCode.SIGTERM


# --- recipe B: the runner installed into an application's image -------------------------------
#
# deploy/Dockerfile.app-with-runner: an application image (its ENTRYPOINT starts the app, not
# the runner) into which the runner's wheel is installed on top of requirements.lock (hashes).
# It is run the two ways the docs promise: with the Helm chart's command/args (rendered by helm,
# so a change to the chart is a change to this test) and with the compose service's
# entrypoint/command (read from deploy/docker-compose.app-with-runner.yml).

APP_WITH_RUNNER_IMAGE = "localhost/migration-runner-app-with-runner:test"
APP_WITH_RUNNER_COMPOSE = REPO / "deploy" / "docker-compose.app-with-runner.yml"
#: The application's own entrypoint (deploy/app/shop_app.py): the runner must override it.
APP_ENTRYPOINT = ["python3", "-m", "shop_app"]
APP_DIR = "/srv/app"
#: examples/migrations/versions, oldest first.
EXAMPLE_CHAIN = ["0001_customers", "0002_orders", "0003_orders_idx", "0004_is_open"]


@pytest.fixture(scope="session")
def runner_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runner's wheel as a user builds it (`pip wheel --no-deps .`), under the
    distribution's name, with the `migration-runner` console script."""
    out = tmp_path_factory.mktemp("wheel")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(REPO)],
        timeout=600,
    )
    (wheel,) = out.glob("*.whl")
    assert wheel.name.startswith("alembic_migration_runner-"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        dist_info = next(
            n.split("/")[0] for n in zf.namelist() if n.endswith(".dist-info/METADATA")
        )
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert "Name: alembic-migration-runner" in metadata.splitlines()
    assert "migration-runner = runner.cli:main" in entry_points
    return wheel


def _context_from_allow_list(dest: Path) -> None:
    """Copy what .dockerignore allows into `dest`: building from it proves the allow-list holds
    everything the Dockerfile COPYs, and a stale wheel in the checkout's dist/ cannot leak in."""
    for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        if not line.startswith("!") or line.startswith("!dist/"):
            continue
        for source in REPO.glob(line[1:].rstrip("/")):
            target = dest / source.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, target)


@pytest.fixture(scope="session")
def app_with_runner_image(
    pm: list[str], runner_wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    context = tmp_path_factory.mktemp("app-with-runner-context")
    _context_from_allow_list(context)
    (context / "dist").mkdir()
    shutil.copy2(runner_wheel, context / "dist" / runner_wheel.name)
    build_image(
        pm,
        APP_WITH_RUNNER_IMAGE,
        dockerfile="deploy/Dockerfile.app-with-runner",
        build_args={"PYTHON_IMAGE": ensure_base_image(pm)},
        context=context,
    )
    return APP_WITH_RUNNER_IMAGE


def _applied_chain(stderr: str) -> list[str]:
    return [e["revision"] for e in events(stderr) if e.get("event") == "revision_applied"]


def _version_of(url: str) -> list[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


def test_app_image_keeps_its_own_entrypoint(pm: list[str], app_with_runner_image: str) -> None:
    """The recipe is only meaningful if the image's ENTRYPOINT is the application: the runner
    runs because the chart/compose override it, not because the image starts it."""
    (info,) = json.loads(run([*pm, "image", "inspect", app_with_runner_image]).stdout)
    assert info["Config"]["Entrypoint"] == APP_ENTRYPOINT
    assert info["Config"]["WorkingDir"] == APP_DIR
    assert info["Config"]["User"] == f"{IMAGE_UID}:{IMAGE_UID}"


def _chart_container(image: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The runner container and pod security context the chart renders for this image."""
    values = {
        "image": {"repository": image.rsplit(":", 1)[0], "tag": image.rsplit(":", 1)[1]},
        "runner": {"workingDir": APP_DIR},
        # No cluster here: Events would only log `kube_events_unavailable`.
        "events": {"enabled": False},
    }
    rendered = run(
        [helm(), "template", "shop", str(REPO / "helm" / "migration-runner"), "--values", "-"],
        input=yaml.safe_dump(values),
    ).stdout
    (job,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    (migrate,) = [c for c in pod["containers"] if c["name"] == "migrate"]
    return migrate, pod["securityContext"]


@pytest.mark.timeout(900)
def test_app_image_migrates_postgres_with_the_charts_command_and_args(
    pm: list[str], app_with_runner_image: str, db_url: str, tmp_path: Path
) -> None:
    c, pod_security = _chart_container(app_with_runner_image)
    assert c["image"] == app_with_runner_image
    security = c["securityContext"]
    options = [
        "--entrypoint",
        json.dumps(c["command"]),  # the chart's command: replaces the app's ENTRYPOINT
        "--workdir",
        c["workingDir"],
        "--user",
        f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}",
    ]
    if security.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    options += [arg for cap in security["capabilities"]["drop"] for arg in ("--cap-drop", cap)]
    # The kubelet's termination-message file, here a host file the runner's UID may write.
    termination = tmp_path / "termination-log"
    termination.touch()
    termination.chmod(0o666)
    options += ["--volume", f"{termination}:{c['terminationMessagePath']}:rw"]
    # The pod's environment: literal values as rendered; the URL from the Secret (here: the
    # test's database); the Downward API fields as the kubelet would fill them; and
    # KUBERNETES_SERVICE_HOST, which the kubelet sets in every pod (events are off, so nothing
    # connects to it) and which makes the runner write the termination message.
    downward = {
        "metadata.name": "shop-migration-runner-x7k2p",
        "metadata.namespace": "prod",
        "metadata.labels['job-name']": "shop-migration-runner",
    }
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1"}
    for var in c["env"]:
        source = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in source:
            env[var["name"]] = downward[source["fieldRef"]["fieldPath"]]
        else:
            assert var["name"] == "MIGRATION_DATABASE_URL" and "secretKeyRef" in source, var
            env[var["name"]] = db_url
    assert security["readOnlyRootFilesystem"] is True  # podman_run: --read-only, tmpfs /tmp

    proc = podman_run(pm, app_with_runner_image, *c["args"], env=env, options=tuple(options))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = finished(proc.stderr)
    assert summary["command"] == "upgrade"
    assert summary["exit_code"] == 0 and summary["outcome"] == "success"
    assert summary["applied"] == len(EXAMPLE_CHAIN)
    assert summary["to_revision"] == EXAMPLE_CHAIN[-1]
    assert _applied_chain(proc.stderr) == EXAMPLE_CHAIN
    assert _version_of(db_url) == [EXAMPLE_CHAIN[-1]]
    assert "app_started" not in proc.stdout + proc.stderr, "the application ran instead"
    assert summary["job"] == "shop-migration-runner", "every line names the pod's Job"
    message = json.loads(termination.read_text(encoding="utf-8"))
    assert message["exit_code"] == 0 and message["applied"] == len(EXAMPLE_CHAIN)


@pytest.mark.timeout(900)
def test_app_image_migrates_postgres_with_the_compose_services_entrypoint_and_command(
    pm: list[str], app_with_runner_image: str, db_url: str
) -> None:
    compose = yaml.safe_load(
        run([require_tool("docker-compose"), "-f", str(APP_WITH_RUNNER_COMPOSE), "config"]).stdout
    )
    migrate = compose["services"]["migrate"]
    app = compose["services"]["app"]
    assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "entrypoint" not in app, "the app service starts the image's own entrypoint"
    assert migrate["read_only"] is True and "/tmp" in migrate["tmpfs"]  # noqa: S108
    env = {**migrate["environment"], "MIGRATION_DATABASE_URL": db_url}
    options = ("--entrypoint", json.dumps(migrate["entrypoint"]), "--user", migrate["user"])

    first = podman_run(pm, app_with_runner_image, *migrate["command"], env=env, options=options)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = finished(first.stderr)
    assert summary["exit_code"] == 0 and summary["outcome"] == "success"
    assert summary["applied"] == len(EXAMPLE_CHAIN)
    assert _applied_chain(first.stderr) == EXAMPLE_CHAIN
    assert _version_of(db_url) == [EXAMPLE_CHAIN[-1]]

    # `docker compose up` again (the next deploy): nothing to do, still exit 0.
    again = podman_run(pm, app_with_runner_image, *migrate["command"], env=env, options=options)
    assert again.returncode == 0, again.stderr[-3000:]
    assert finished(again.stderr)["applied"] == 0
    assert _applied_chain(again.stderr) == []

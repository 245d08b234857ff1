"""deploy/: the docker-compose one-shot, the plain Kubernetes manifests, and the Dockerfiles'
lint. All offline: `docker-compose config`, `kubernetes-validate`, `hadolint`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.errors import PERMANENT_EXIT_CODES
from tests.support_tools import REPO, require_tool, run

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
OLDEST_KUBE = "1.29.0"


# --- docker-compose ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as docker-compose itself resolves it (paths made absolute)."""
    exe = require_tool("docker-compose")
    run([exe, "-f", str(COMPOSE), "config", "-q"])
    resolved: dict[str, Any] = yaml.safe_load(run([exe, "-f", str(COMPOSE), "config"]).stdout)
    return resolved


def test_compose_file_is_valid(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"db", "migrate", "app"}


def test_database_has_a_healthcheck_and_migrate_waits_for_it(compose: dict[str, Any]) -> None:
    db, migrate = compose["services"]["db"], compose["services"]["migrate"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"


def test_app_starts_only_after_migrate_completed_successfully(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]
    assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_migrate_is_a_one_shot_built_from_the_dockerfile(compose: dict[str, Any]) -> None:
    migrate = compose["services"]["migrate"]
    assert migrate["restart"] == "no", "a failed migration must not loop"
    assert Path(migrate["build"]["context"]) == REPO
    assert migrate["build"]["dockerfile"] == "Dockerfile"
    assert migrate["command"] == ["upgrade"]
    assert migrate["read_only"] is True
    assert migrate["user"].split(":")[0].isdigit() and migrate["user"] != "0:0"
    assert migrate["environment"]["MIGRATION_DATABASE_URL"].startswith("postgresql+psycopg2://")
    assert "@db:5432/" in migrate["environment"]["MIGRATION_DATABASE_URL"]


def test_compose_mounts_only_files_that_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            if source and source.startswith("/"):
                assert Path(source).exists(), f"{name}: {source}"


def test_app_with_runner_compose_overrides_the_apps_entrypoint() -> None:
    """Recipe B in compose: the same image migrates (runner as entrypoint) and then serves (its
    own entrypoint). `command:` alone would be handed to the app's ENTRYPOINT as arguments.
    (tests/test_image.py runs the image with this service's entrypoint and command.)"""
    exe = require_tool("docker-compose")
    path = DEPLOY / "docker-compose.app-with-runner.yml"
    resolved = yaml.safe_load(run([exe, "-f", str(path), "config"]).stdout)
    migrate, app = resolved["services"]["migrate"], resolved["services"]["app"]
    assert migrate["entrypoint"] == ["migration-runner"]
    assert migrate["command"] == ["upgrade"]
    assert (REPO / migrate["build"]["dockerfile"]).is_file()
    assert migrate["restart"] == "no" and migrate["read_only"] is True
    assert app["image"] == migrate["image"], "one image for both"
    assert "entrypoint" not in app and "command" not in app
    assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


# --- plain Kubernetes manifests ---------------------------------------------------------------


def _k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return docs


def test_kustomization_lists_existing_files_and_leaves_the_secret_example_out() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    resources = kustomization["resources"]
    assert all((K8S / r).is_file() for r in resources), resources
    assert {"job.yaml", "serviceaccount.yaml", "rbac.yaml"} <= set(resources)
    assert "secret.example.yaml" not in resources, "a placeholder Secret is never applied"


@pytest.mark.parametrize(
    "manifest", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
)
def test_k8s_manifests_validate_against_oldest_supported_kubernetes(manifest: str) -> None:
    validator = require_tool("kubernetes-validate")
    proc = run([validator, "--strict", "-k", OLDEST_KUBE, str(K8S / manifest)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_k8s_job_keeps_the_same_safe_defaults_as_the_chart() -> None:
    (job,) = [d for d in _k8s_docs() if d["kind"] == "Job"]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert pod["restartPolicy"] == "Never"
    assert 0 < spec["backoffLimit"] <= 3
    budget = sum(
        float(env[k])
        for k in (
            "MIGRATION_CONNECT_TIMEOUT",
            "MIGRATION_LOCK_TIMEOUT",
            "MIGRATION_DDL_RETRY_BUDGET",
        )
    )
    assert budget + 30 < spec["activeDeadlineSeconds"] < 300
    assert spec["ttlSecondsAfterFinished"] >= 3600
    assert spec["podReplacementPolicy"] == "Failed"
    (fail,) = [r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert set(fail["onExitCodes"]["values"]) == {int(x) for x in PERMANENT_EXIT_CODES}
    assert fail["onExitCodes"]["containerName"] == c["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert env["MIGRATION_JOB_NAME"] == {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")  # noqa: S108
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    secret_ref = env["MIGRATION_DATABASE_URL"]["secretKeyRef"]
    (secret,) = [d for d in _k8s_docs() if d["kind"] == "Secret"]
    assert secret_ref["name"] == secret["metadata"]["name"]
    assert secret_ref["key"] in secret["stringData"]
    (sa,) = [d for d in _k8s_docs() if d["kind"] == "ServiceAccount"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


# --- Dockerfiles ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dockerfile",
    ["Dockerfile", "deploy/Dockerfile.example-app", "deploy/Dockerfile.app-with-runner"],
)
def test_hadolint_passes_at_warning_threshold(dockerfile: str) -> None:
    hadolint = require_tool("hadolint")
    proc = run([hadolint, "--failure-threshold", "warning", str(REPO / dockerfile)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_installs_reproducibly_and_never_takes_secrets_as_build_args() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    flat = " ".join(text.replace("\\\n", " ").split())
    assert "--no-deps --require-hashes -r /src/requirements.lock" in flat
    assert "--no-deps" in text
    assert "ARG PYTHON_IMAGE=" in text
    assert "--mount=type=secret,id=pip_ca" in text
    args = [ln.split()[1] for ln in text.splitlines() if ln.startswith("ARG ")]
    assert args == ["PYTHON_IMAGE=python:3.11-slim-bookworm"], "no certificate/credential args"
    assert 'ENTRYPOINT ["migration-runner"]' in text
    assert 'CMD ["upgrade"]' in text


def test_build_context_allow_list_names_files_that_exist() -> None:
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: everything is excluded unless named"
    allowed = [ln[1:].rstrip("/") for ln in lines if ln.startswith("!")]
    assert {"pyproject.toml", "README.md", "requirements.lock", "runner"} <= set(allowed)
    for path in allowed:
        if path == "README.md":  # written with the user docs
            continue
        if path.startswith("dist/"):  # a build output: the wheel recipe B installs
            assert path == "dist/alembic_migration_runner-*.whl", path
            continue
        assert (REPO / path).exists(), path

"""GitHub workflows: they parse, pin every action by commit SHA, grant least privilege, and only
reference files that exist in this repository."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support_tools import REPO

WORKFLOWS = REPO / ".github" / "workflows"
FILES = sorted(p.name for p in WORKFLOWS.glob("*.yml"))
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
#: Repository paths a `run:` script or a `with:` input may name.
LOCAL_PATH = re.compile(
    r"(?<![\w/.$-])(?:\./)?((?:scripts|deploy|helm|tests|examples|docs|runner|\.github|\.ci)"
    r"/[\w./-]*[\w-]|Dockerfile|requirements(?:-dev)?\.lock|pyproject\.toml)"
)
#: Write scopes a workflow may ask for, and where.
ALLOWED_WRITES = {"release.yml": {"packages"}, "lint-migrations.yml": {"security-events"}}


def load(name: str) -> dict[str, Any]:
    data: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as True.
    if True in data:
        data["on"] = data.pop(True)
    return {str(key): value for key, value in data.items()}


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_the_three_workflows_exist() -> None:
    assert {"ci.yml", "release.yml", "deploy-example.yml"} <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_workflow_parses_and_has_triggers_and_jobs(name: str) -> None:
    workflow = load(name)
    assert workflow["on"], name
    assert workflow["jobs"], name
    for job_id, job in workflow["jobs"].items():
        assert job.get("timeout-minutes"), f"{name}:{job_id} needs a timeout"
        for need in [job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", []):
            assert need in workflow["jobs"], f"{name}:{job_id} needs unknown job {need}"


@pytest.mark.parametrize("name", FILES)
def test_every_action_is_pinned_by_commit_sha(name: str) -> None:
    for step in steps(load(name)):
        uses = step.get("uses")
        if uses is None or uses.startswith("./"):
            continue
        assert SHA_PIN.match(uses), f"{name}: {uses} is not pinned by a 40-hex commit SHA"


@pytest.mark.parametrize("name", FILES)
def test_permissions_are_least_privilege(name: str) -> None:
    workflow = load(name)
    assert workflow.get("permissions") == {"contents": "read"}, (
        f"{name}: the workflow-level token must be read-only"
    )
    for job_id, job in workflow["jobs"].items():
        perms = job.get("permissions", {})
        assert perms not in ("write-all", "read-all"), f"{name}:{job_id}"
        writes = {scope for scope, level in perms.items() if level == "write"}
        assert writes <= ALLOWED_WRITES.get(name, set()), f"{name}:{job_id} writes {writes}"


@pytest.mark.parametrize("name", FILES)
def test_checkout_does_not_persist_the_token(name: str) -> None:
    for step in steps(load(name)):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, name


@pytest.mark.parametrize("name", FILES)
def test_every_local_path_referenced_exists(name: str) -> None:
    referenced: set[str] = set()
    for step in steps(load(name)):
        texts = [step.get("run", "")] + [str(v) for v in step.get("with", {}).values()]
        for text in texts:
            referenced.update(m.group(1) for m in LOCAL_PATH.finditer(text))
    missing = sorted(path for path in referenced if not _exists(path))
    assert not missing, f"{name} references files that do not exist: {missing}"


def _exists(path: str) -> bool:
    if "*" in path:
        return True  # a build output (dist/*.tgz)
    return (REPO / path).exists() or path.startswith(".tools/")


def test_local_path_pattern_finds_what_the_workflows_use() -> None:
    found = {m.group(1) for m in LOCAL_PATH.finditer("sudo bash scripts/install-system-tools.sh")}
    assert found == {"scripts/install-system-tools.sh"}
    found = {m.group(1) for m in LOCAL_PATH.finditer("hadolint Dockerfile deploy/Dockerfile.x")}
    assert found == {"Dockerfile", "deploy/Dockerfile.x"}


def test_ci_runs_tests_against_postgres_and_mariadb_and_builds_the_image() -> None:
    ci = load("ci.yml")
    services = {
        name.split(":")[0]
        for job in ci["jobs"].values()
        for name in (s["image"] for s in job.get("services", {}).values())
    }
    assert {"postgres", "mariadb"} <= services
    runs = " ".join(step.get("run", "") for step in steps(ci))
    for needle in ("ruff check", "mypy", "pytest", "-m image", "helm lint --strict", "hadolint"):
        assert needle in runs, needle


def test_release_builds_multi_arch_with_provenance_and_sbom_and_packages_the_chart() -> None:
    release = load("release.yml")
    build = next(s for s in steps(release) if s.get("uses", "").startswith("docker/build-push"))
    assert "linux/arm64" in build["with"]["platforms"]
    assert "linux/amd64" in build["with"]["platforms"]
    assert build["with"]["provenance"] and build["with"]["sbom"] is True
    assert build["with"]["file"] == "Dockerfile" and (REPO / "Dockerfile").exists()
    runs = " ".join(step.get("run", "") for step in steps(release))
    assert "helm package helm/migration-runner" in runs


def test_deploy_example_migrates_before_the_app_and_passes_the_step_summary() -> None:
    deploy = load("deploy-example.yml")
    assert deploy["jobs"]["deploy"]["needs"] == "migrate"
    (step,) = deploy["jobs"]["migrate"]["steps"]
    assert step["env"]["MIGRATION_DATABASE_URL"] == "${{ secrets.DATABASE_URL }}"
    script = step["run"]
    assert "--env GITHUB_ACTIONS" in script
    assert "GITHUB_STEP_SUMMARY" in script
    assert "|| true" not in script, "a failed migration must fail the job"
    helm = " ".join(s.get("run", "") for s in deploy["jobs"]["helm"]["steps"])
    assert "helm upgrade --install" in helm and "--wait" in helm
    assert Path(REPO / "helm/migration-runner/Chart.yaml").exists()


def test_lint_workflow_lints_the_pull_requests_revisions_on_a_postgres_service() -> None:
    """The recipe a platform engineer copies: a PostgreSQL service as the shadow server, the
    base branch fetched, `lint --since` the base, the SARIF uploaded even when lint fails."""
    workflow = load("lint-migrations.yml")
    assert "pull_request" in workflow["on"]
    (job,) = workflow["jobs"].values()
    assert job["services"]["postgres"]["image"].startswith("postgres:")
    assert job["env"]["MIGRATION_SHADOW_URL"].startswith("postgresql://")
    assert (REPO / job["env"]["MIGRATION_CONFIG"]).is_file()
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    lint = next(s for s in job["steps"] if "migration-runner lint" in s.get("run", ""))
    assert '--since "origin/$BASE_REF"' in lint["run"] and "--sarif-file" in lint["run"]
    assert lint["env"]["BASE_REF"] == "${{ github.base_ref }}", "no expression inside run:"
    upload = next(
        s
        for s in job["steps"]
        if s.get("uses", "").startswith("github/codeql-action/upload-sarif@")
    )
    assert upload["if"].startswith("always()")
    assert upload["with"]["sarif_file"] in lint["run"]

"""The chart's fleet mode: an Indexed Job with one pod per shard, retried per index, the
permanent exit codes failing their index only; rendered, linted, validated against the
Kubernetes schemas, and checked for the cross-field rules the schemas do not carry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner.errors import PERMANENT_EXIT_CODES, TRANSIENT_EXIT_CODES
from runner.settings import load_settings
from tests.support_tools import helm, require_tool, run
from tests.test_chart import (
    CHART,
    OLDEST_KUBE,
    _render_text,
    _write_values,
    container,
    env_of,
    render_fails,
    the_job,
)

pytestmark = pytest.mark.chart

FLEETS: dict[str, dict[str, Any]] = {
    "tenants": {"fleet": {"enabled": True, "shards": 4, "tenants": ["acme", "globex", "initech"]}},
    "query_with_limits": {
        "fleet": {
            "enabled": True,
            "shards": 10,
            "parallel": 2,
            "tenantsQuery": "SELECT schema_name FROM tenants WHERE active",
            "maxFailed": 3,
            "canary": 1,
            "backoffLimitPerIndex": 1,
            "maxFailedIndexes": 2,
        },
        "job": {"activeDeadlineSeconds": 3000},
    },
    "urls_file": {
        "fleet": {"enabled": True, "shards": 2, "databaseUrls": {"existingSecret": "tenant-dbs"}},
        "hooks": {"enabled": False},
    },
    "tenants_file": {
        "fleet": {"enabled": True, "tenantsFile": "/etc/tenants/list"},
        "extraVolumes": [{"name": "tenants", "configMap": {"name": "tenants"}}],
        "extraVolumeMounts": [{"name": "tenants", "mountPath": "/etc/tenants"}],
    },
}


@pytest.mark.parametrize("combo", sorted(FLEETS))
def test_fleet_charts_lint_strict_and_validate_against_kubernetes(
    combo: str, tmp_path: Path
) -> None:
    values = FLEETS[combo]
    linted = run(
        [helm(), "lint", "--strict", str(CHART), "-f", str(_write_values(values, tmp_path))]
    )
    assert "0 chart(s) failed" in linted.stdout
    validator = require_tool("kubernetes-validate")
    text = _render_text(json.dumps(values, sort_keys=True))
    proc = run([validator, "--strict", "-k", OLDEST_KUBE, "-"], input=text, check=False)
    assert proc.returncode == 0 and "ERROR" not in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("combo", sorted(FLEETS))
def test_a_fleet_is_an_indexed_job_with_one_pod_per_shard_retried_per_index(combo: str) -> None:
    fleet = FLEETS[combo]["fleet"]
    shards = fleet.get("shards", 1)
    spec = the_job(FLEETS[combo])["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == shards
    assert spec["backoffLimitPerIndex"] == fleet.get("backoffLimitPerIndex", 2)
    assert "backoffLimit" not in spec, "a global limit would fail the whole fleet for one shard"
    if "maxFailedIndexes" in fleet:
        assert spec["maxFailedIndexes"] == fleet["maxFailedIndexes"] <= spec["completions"]
    else:
        assert "maxFailedIndexes" not in spec
    # Cross-field rules of the Job API that the schemas do not check.
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["podReplacementPolicy"] == "Failed"


def test_permanent_exit_codes_fail_only_their_index_and_transient_ones_are_retried() -> None:
    rules = the_job(FLEETS["tenants"])["spec"]["podFailurePolicy"]["rules"]
    (fail_index,) = [r for r in rules if r["action"] == "FailIndex"]
    assert not [r for r in rules if r["action"] == "FailJob"], "one shard never fails the rest"
    codes = set(fail_index["onExitCodes"]["values"])
    assert codes == {int(c) for c in PERMANENT_EXIT_CODES}
    assert not codes & {int(c) for c in TRANSIENT_EXIT_CODES}
    assert fail_index["onExitCodes"]["containerName"] == "migrate"
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in rules


def test_the_pods_environment_is_what_the_runner_reads_as_its_shard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rendered variables, plus the JOB_COMPLETION_INDEX Kubernetes gives an Indexed
    Job's pod, loaded by the runner's own settings."""
    env = env_of(container(the_job(FLEETS["query_with_limits"])))
    assert "MIGRATION_SHARD_INDEX" not in env, "the index comes from the Job"
    for var in list(__import__("os").environ):
        if var.startswith("MIGRATION_"):
            monkeypatch.delenv(var)
    for name, value in env.items():
        if name.startswith("MIGRATION_") and isinstance(value, str):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "7")
    settings = load_settings()
    assert (
        settings.fleet and settings.tenants_query == "SELECT schema_name FROM tenants WHERE active"
    )
    assert (settings.shard_count, settings.shard_index) == (10, 7)
    assert (settings.parallel, settings.max_failed, settings.canary) == (2, 3, 1)


def test_a_fleet_of_databases_reads_its_urls_from_the_mounted_secret_only() -> None:
    job = the_job(FLEETS["urls_file"])
    c = container(job)
    env = env_of(c)
    assert "MIGRATION_DATABASE_URL" not in env, "the main database Secret is not needed"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "database-urls")
    assert mount["readOnly"] is True
    assert env["MIGRATION_DATABASE_URLS_FILE"] == f"{mount['mountPath']}/urls"
    volume = next(
        v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "database-urls"
    )
    assert volume["secret"] == {
        "secretName": "tenant-dbs",
        "items": [{"key": "urls", "path": "urls"}],
    }


def test_tenants_reach_the_runner_as_one_list() -> None:
    env = env_of(container(the_job(FLEETS["tenants"])))
    assert env["MIGRATION_TENANTS"] == "acme,globex,initech"
    assert env["MIGRATION_SHARD_COUNT"] == "4"
    assert env["MIGRATION_DATABASE_URL"]["secretKeyRef"]["name"] == "shop-database"


def test_without_fleet_the_job_is_the_one_database_job() -> None:
    spec = the_job()["spec"]
    assert "completionMode" not in spec and spec["backoffLimit"] == 2
    assert [r["action"] for r in spec["podFailurePolicy"]["rules"]] == ["FailJob", "Ignore"]
    assert not [k for k in env_of(container(the_job())) if "SHARD" in k or "TENANT" in k]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"fleet": {"enabled": True}}, "exactly one source of targets"),
        (
            {"fleet": {"enabled": True, "tenants": ["a"], "tenantsQuery": "SELECT 1"}},
            "exactly one source of targets",
        ),
        (
            {"fleet": {"enabled": True, "tenants": ["a"]}, "runner": {"command": "downgrade"}},
            "acts on one database",
        ),
        (
            {"fleet": {"enabled": True, "tenants": ["a"], "shards": 2, "maxFailedIndexes": 3}},
            "cannot exceed fleet.shards",
        ),
        ({"fleet": {"enabled": True, "tenants": ["a b"]}}, "fleet.tenants"),
        ({"fleet": {"enabled": True, "tenants": ["a"], "shard": 2}}, "Additional property shard"),
        ({"fleet": {"databaseUrls": {"secret": "x"}}}, "Additional property secret"),
        ({"fleet": {"shards": 0}}, "fleet.shards"),
    ],
)
def test_the_chart_refuses_a_fleet_that_cannot_work(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    assert message in render_fails(values, tmp_path)

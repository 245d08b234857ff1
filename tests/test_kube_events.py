"""Kubernetes Events on the owning Job, against the fake API server (tests/fake_kube_api.py).

The real `kubernetes` client talks HTTP to the fake through a kubeconfig, so these pin down the
requests the runner really sends, and that a denied or unreachable API never fails a run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from runner import kube
from runner.logs import captured
from runner.observers import NullObserver, RunObserver, notify
from runner.report import AppliedRevision, RunReport
from runner.settings import Settings
from tests.fake_kube_api import FakeKubeApi
from tests.support import Rev, report_of, run_cli, table_rev, write_project

pytestmark = pytest.mark.timeout(60)

NS = "migrations"
JOB = "app-migrate-x7k2p"
POD = "app-migrate-x7k2p-9qz4c"


@pytest.fixture
def fake_api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        yield api


@pytest.fixture
def kubeconfig(fake_api: FakeKubeApi, tmp_path: Path) -> str:
    return str(fake_api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS))


def _settings(**kw: Any) -> Settings:
    values: dict[str, Any] = {
        "kube_events": "on",
        "in_kubernetes": False,
        "pod_namespace": NS,
        "pod_name": POD,
        "job_name": JOB,
    }
    values.update(kw)
    return Settings(**values)


def _observer(kubeconfig: str, **kw: Any) -> RunObserver:
    observer = kube.event_observer(_settings(**kw), kubeconfig=kubeconfig)
    assert observer is not None
    return observer


def _success() -> RunReport:
    return report_of(
        command="upgrade",
        from_revision="a1",
        to_revision="c3",
        duration_ms=2500,
        applied=[
            AppliedRevision("b2", "a1", "add users", 1200),
            AppliedRevision("c3", "b2", "index users.email", 1300),
        ],
    )


def _failure() -> RunReport:
    return report_of(
        command="upgrade",
        exit_code=70,
        outcome="migration_failed",
        from_revision="a1",
        failed_revision="b2",
        reason='relation "users" already exists\n(second line)',
    )


def test_started_event_is_posted_on_the_owning_job(fake_api: FakeKubeApi, kubeconfig: str) -> None:
    job = fake_api.add_job(NS, JOB)
    _observer(kubeconfig).run_started("upgrade")

    [request] = fake_api.requests_for("POST", "/events$")
    assert request.path == f"/api/v1/namespaces/{NS}/events"
    event = request.body
    assert event["reason"] == "MigrationStarted"
    assert event["type"] == "Normal"
    assert event["involvedObject"] == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": JOB,
        "namespace": NS,
        "uid": job["metadata"]["uid"],  # `kubectl describe job` matches Events by uid too
    }
    assert event["message"] == f"migration-runner upgrade started in pod {POD}"
    assert event["source"] == {"component": "migration-runner"}
    assert event["reportingComponent"] == "migration-runner"
    assert event["reportingInstance"] == POD
    assert event["metadata"]["name"].startswith(f"{JOB}.")
    assert event["metadata"]["namespace"] == NS
    assert event["count"] == 1
    assert event["firstTimestamp"] == event["lastTimestamp"]
    assert datetime.fromisoformat(event["firstTimestamp"]).tzinfo is not None


def test_succeeded_event_lists_the_applied_revisions(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    fake_api.add_job(NS, JOB)
    _observer(kubeconfig).run_finished(_success())

    [event] = fake_api.events
    assert event["reason"] == "MigrationSucceeded"
    assert event["type"] == "Normal"
    assert event["message"] == (
        "applied 2 revisions in 2.5s: b2 (add users), c3 (index users.email); database now at c3"
    )


def test_succeeded_event_with_nothing_to_apply_names_the_current_revision(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    fake_api.add_job(NS, JOB)
    _observer(kubeconfig).run_finished(
        report_of(command="upgrade", from_revision="c3", to_revision="c3", duration_ms=300)
    )
    assert fake_api.events[0]["message"] == "nothing to apply: database at c3 (0.3s)"


def test_failed_event_is_a_warning_with_exit_code_and_one_line_reason(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    fake_api.add_job(NS, JOB)
    _observer(kubeconfig).run_finished(_failure())

    [event] = fake_api.events
    assert event["reason"] == "MigrationFailed"
    assert event["type"] == "Warning"
    assert event["message"] == (
        'exit code 70 (migration_failed) at revision b2: relation "users" already exists '
        "(second line)"
    )


def test_waiting_event_says_another_runner_holds_the_lock(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    fake_api.add_job(NS, JOB)
    _observer(kubeconfig).lock_waiting("pg_advisory_lock(4242)", 0.0)

    [event] = fake_api.events
    assert event["reason"] == "MigrationWaiting"
    assert event["type"] == "Normal"
    assert event["message"] == (
        "migration lock pg_advisory_lock(4242) is held by another runner; waiting for it"
    )


def test_a_whole_run_posts_started_waiting_then_succeeded_in_order(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    fake_api.add_job(NS, JOB)
    observer = _observer(kubeconfig)
    observer.run_started("upgrade")
    observer.lock_waiting("k", 0.0)
    observer.revision_applied(AppliedRevision("b2", "a1", "add users", 1))  # no event
    observer.run_finished(_success())
    assert [e["reason"] for e in fake_api.events] == [
        "MigrationStarted",
        "MigrationWaiting",
        "MigrationSucceeded",
    ]


def test_without_job_name_the_job_is_found_from_the_pods_owner_reference(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    job = fake_api.add_job(NS, "hook-job")
    fake_api.add_pod(NS, POD, job=job)
    _observer(kubeconfig, job_name=None).run_started("upgrade")

    assert fake_api.requests_for("GET", f"/namespaces/{NS}/pods/{POD}$")
    [event] = fake_api.events
    assert event["involvedObject"]["name"] == "hook-job"
    assert event["involvedObject"]["uid"] == job["metadata"]["uid"]


def test_without_job_or_pod_name_there_is_no_observer_and_a_warning(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    with captured() as logs:
        observer = kube.event_observer(
            _settings(job_name=None, pod_name=None), kubeconfig=kubeconfig
        )
    assert observer is None
    assert [e["event"] for e in logs] == ["kube_events_unavailable"]
    assert "MIGRATION_JOB_NAME" in logs[0]["reason"]


def test_events_forbidden_by_rbac_warn_once_then_the_observer_stays_quiet(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    fake_api.add_job(NS, JOB)
    fake_api.forbid("create", "events")
    observer = _observer(kubeconfig)
    with captured() as logs:
        observer.run_started("upgrade")
        observer.lock_waiting("k", 0.0)
        observer.run_finished(_success())

    assert len(fake_api.requests_for("POST", "/events$")) == 1  # disabled after the first 403
    assert [(e["event"], e["level"]) for e in logs] == [("kube_events_unavailable", "warning")]
    assert "forbidden (HTTP 403)" in logs[0]["reason"]
    assert logs[0]["status"] == 403


def test_a_denied_observer_does_not_disturb_the_other_observers(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    """notify() goes on to the next observer, and nothing is raised to the migration."""
    fake_api.add_job(NS, JOB)
    fake_api.forbid("create", "events")
    seen: list[str] = []

    class Recorder(NullObserver):
        def run_finished(self, report: RunReport) -> None:
            seen.append(report.outcome)

    observers = [_observer(kubeconfig), Recorder()]
    with captured() as logs:
        notify(observers, lambda o: o.run_finished(_success()))
    assert seen == ["success"]
    assert "observer_failed" not in [e["event"] for e in logs]


def test_reading_the_job_forbidden_means_no_observer_and_a_warning(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    fake_api.add_job(NS, JOB)
    fake_api.forbid("get", "jobs")
    with captured() as logs:
        observer = kube.event_observer(_settings(), kubeconfig=kubeconfig)
    assert observer is None
    assert [e["event"] for e in logs] == ["kube_events_unavailable"]
    assert f"job/{JOB}" in logs[0]["reason"] and "403" in logs[0]["reason"]


def test_an_unreachable_api_server_means_no_observer_and_a_warning(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    fake_api.down()
    began = time.monotonic()
    with captured() as logs:
        observer = kube.event_observer(_settings(), kubeconfig=kubeconfig)
    assert observer is None
    assert time.monotonic() - began < 5
    assert [e["event"] for e in logs] == ["kube_events_unavailable"]
    assert "not reachable" in logs[0]["reason"]


def test_a_hanging_api_server_costs_at_most_the_call_timeout(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    fake_api.add_job(NS, JOB)
    fake_api.hang = True
    began = time.monotonic()
    with captured() as logs:
        observer = kube.event_observer(_settings(), kubeconfig=kubeconfig, timeout=(0.5, 0.5))
    assert observer is None
    assert time.monotonic() - began < 3
    assert [e["event"] for e in logs] == ["kube_events_unavailable"]


def test_a_missing_kubeconfig_means_no_observer_and_a_warning(tmp_path: Path) -> None:
    with captured() as logs:
        observer = kube.event_observer(_settings(), kubeconfig=str(tmp_path / "missing"))
    assert observer is None
    assert [e["event"] for e in logs] == ["kube_events_unavailable"]


def test_auto_outside_a_cluster_and_off_build_no_observer(kubeconfig: str) -> None:
    assert kube.event_observer(_settings(kube_events="auto"), kubeconfig=kubeconfig) is None
    assert kube.event_observer(_settings(kube_events="off"), kubeconfig=kubeconfig) is None


def test_in_a_cluster_auto_uses_the_in_cluster_config_and_service_account_namespace(
    fake_api: FakeKubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_incluster(client_configuration: Any) -> None:
        client_configuration.host = fake_api.url

    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("team-a\n")
    monkeypatch.setattr("runner.kube.config.load_incluster_config", fake_incluster)
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT_NAMESPACE", namespace_file)
    fake_api.add_job("team-a", JOB)

    observer = kube.event_observer(
        _settings(kube_events="auto", in_kubernetes=True, pod_namespace=None)
    )
    assert observer is not None
    observer.run_started("upgrade")
    assert fake_api.requests_for("POST", "^/api/v1/namespaces/team-a/events$")


def test_event_messages_are_one_line_and_bounded() -> None:
    report = _failure()
    report.reason = "line one\nline two\t" + "x" * 5000
    message = kube.failed_message(report)
    assert "\n" not in message and "\t" not in message
    assert len(message) == kube.MAX_EVENT_MESSAGE
    assert message.endswith("...")


# --- the real CLI, end to end -----------------------------------------------------------------


def _project(tmp_path: Path, failing: bool = False) -> Path:
    revisions = [table_rev("a1", None, "users")]
    if failing:
        revisions.append(
            Rev("b2", "a1", upgrade='raise RuntimeError("boom in b2")', message="broken")
        )
    write_project(tmp_path, revisions)
    return tmp_path


@pytest.mark.slow
def test_cli_upgrade_posts_started_and_succeeded_events(
    fake_api: FakeKubeApi, kubeconfig: str, tmp_path: Path
) -> None:
    fake_api.add_job(NS, JOB)
    root = _project(tmp_path)
    result = run_cli(
        ["upgrade"],
        f"sqlite:///{root / 'app.db'}",
        cwd=root,
        KUBECONFIG=kubeconfig,
        MIGRATION_KUBE_EVENTS="on",
        MIGRATION_POD_NAMESPACE=NS,
        MIGRATION_JOB_NAME=JOB,
    )
    assert result.returncode == 0, result.stderr
    assert [e["reason"] for e in fake_api.events] == ["MigrationStarted", "MigrationSucceeded"]
    assert fake_api.events[1]["message"].startswith("applied 1 revision in ")
    assert "a1 (create users)" in fake_api.events[1]["message"]


@pytest.mark.slow
def test_cli_failed_migration_posts_a_failed_event_with_exit_code_70(
    fake_api: FakeKubeApi, kubeconfig: str, tmp_path: Path
) -> None:
    fake_api.add_job(NS, JOB)
    root = _project(tmp_path, failing=True)
    result = run_cli(
        ["upgrade"],
        f"sqlite:///{root / 'app.db'}",
        cwd=root,
        KUBECONFIG=kubeconfig,
        MIGRATION_KUBE_EVENTS="on",
        MIGRATION_POD_NAMESPACE=NS,
        MIGRATION_JOB_NAME=JOB,
    )
    assert result.returncode == 70, result.stderr
    failed = fake_api.events[-1]
    assert failed["reason"] == "MigrationFailed"
    assert failed["type"] == "Warning"
    assert failed["message"].startswith("exit code 70 (migration_failed) at revision b2: ")
    assert "boom in b2" in failed["message"]


@pytest.mark.slow
def test_cli_upgrade_succeeds_when_rbac_denies_events(
    fake_api: FakeKubeApi, kubeconfig: str, tmp_path: Path
) -> None:
    fake_api.add_job(NS, JOB)
    fake_api.forbid("create", "events")
    root = _project(tmp_path)
    result = run_cli(
        ["upgrade"],
        f"sqlite:///{root / 'app.db'}",
        cwd=root,
        KUBECONFIG=kubeconfig,
        MIGRATION_KUBE_EVENTS="on",
        MIGRATION_POD_NAMESPACE=NS,
        MIGRATION_JOB_NAME=JOB,
    )
    assert result.returncode == 0, result.stderr
    assert result.finished["outcome"] == "success"
    [warning] = result.named("kube_events_unavailable")
    assert warning["level"] == "warning" and "403" in warning["reason"]


@pytest.mark.slow
def test_cli_in_a_pod_writes_the_termination_message_even_when_the_api_is_unusable(
    tmp_path: Path,
) -> None:
    """KUBERNETES_SERVICE_HOST set, no ServiceAccount token: a warning, and the run succeeds."""
    root = _project(tmp_path)
    termination_log = tmp_path / "termination-log"
    result = run_cli(
        ["upgrade"],
        f"sqlite:///{root / 'app.db'}",
        cwd=root,
        KUBERNETES_SERVICE_HOST="127.0.0.1",
        KUBERNETES_SERVICE_PORT="9",
        MIGRATION_TERMINATION_MESSAGE_PATH=str(termination_log),
        MIGRATION_POD_NAME=POD,
        MIGRATION_POD_NAMESPACE=NS,
        MIGRATION_JOB_NAME=JOB,
    )
    assert result.returncode == 0, result.stderr
    assert result.named("kube_events_unavailable")
    summary = json.loads(termination_log.read_text())
    assert summary["exit_code"] == 0 and summary["outcome"] == "success"
    assert summary["applied"] == 1 and summary["to_revision"] == "a1"

"""`kube-run`: create the migration Job, stream its log, exit with the runner's exit code.

Runs against the fake API server (tests/fake_kube_api.py) with the real `kubernetes` client,
which plays one scripted pod per Job created.
"""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from runner import kube_cli, redact
from runner.errors import ConfigError
from runner.kube import JobStatus, PodStatus
from runner.logs import captured
from tests.fake_kube_api import FakeKubeApi, FakePodScript
from tests.faults.live import LiveCli
from tests.support import CliResult, cli_env, parse_events

pytestmark = pytest.mark.timeout(60)

NS = "ci"
FAST = ["--poll-interval", "0.05"]
SUMMARY = {
    "command": "upgrade",
    "exit_code": 70,
    "outcome": "migration_failed",
    "applied": 0,
    "from_revision": "a1",
    "to_revision": None,
    "duration_ms": 812,
    "reason": 'relation "users" already exists',
    "revision": "b2",
}

MANIFEST = """\
# Source: migration-runner/templates/serviceaccount.yaml
apiVersion: v1
kind: ServiceAccount
metadata:
  name: app-migrate
---
apiVersion: v1
kind: Secret
metadata:
  name: app-db
stringData:
  url: postgresql://app:pw@db/app
---
apiVersion: v1
kind: Service
metadata:
  name: not-for-kube-run
spec:
  ports: [{port: 80}]
---
apiVersion: batch/v1
kind: Job
metadata:
  name: app-migrate
  namespace: somewhere-else
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      serviceAccountName: app-migrate
      containers:
        - name: migrate
          image: registry.example/app-migrations:1.0.0
          args: [upgrade]
          env:
            - name: MIGRATION_JOB_NAME
              value: app-migrate
            - name: MIGRATION_DATABASE_URL
              valueFrom: {secretKeyRef: {name: app-db, key: url}}
"""


@pytest.fixture
def fake_api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        yield api


@pytest.fixture
def kubeconfig(fake_api: FakeKubeApi, tmp_path: Path) -> str:
    return str(fake_api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS))


def _lines(n: int) -> list[str]:
    return [json.dumps({"event": f"line_{i}", "level": "info"}) for i in range(n)]


def kube_run(argv: list[str], out: Any = None) -> tuple[int, bytes, list[dict[str, Any]]]:
    """kube-run in this process: (exit code, what it wrote to stdout, its log events)."""
    out = out if out is not None else io.BytesIO()
    with captured() as logs:
        code = kube_cli.main(argv, stdout=out)
    return code, out.getvalue(), [dict(e) for e in logs]


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def cli_kube_run(args: list[str]) -> CliResult:
    """`python -m runner kube-run ARGS`, the real CLI in a process of its own."""
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "kube-run", *args, *FAST],
        env=cli_env(None),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr, parse_events(proc.stderr))


def test_job_from_flags_has_the_image_secret_config_and_command(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    code, _, logs = kube_run(
        [
            "--kubeconfig",
            kubeconfig,
            "--image",
            "registry.example/app-migrations:2.1.0",
            "--secret",
            "app-db:database-url",
            "--config",
            "/app/alembic.ini",
            "--command",
            "upgrade head",
            "--env",
            "MIGRATION_LOCK_TIMEOUT=60",
            "--service-account",
            "migrator",
            *FAST,
        ]
    )
    assert code == 0

    [request] = fake_api.requests_for("POST", "/jobs$")
    assert request.path == f"/apis/batch/v1/namespaces/{NS}/jobs"  # the context's namespace
    job = request.body
    name = job["metadata"]["name"]
    assert name.startswith("migration-runner-") and len(name) == len("migration-runner-") + 5
    assert job["metadata"]["namespace"] == NS
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "migrator"
    [container] = pod["containers"]
    assert container["image"] == "registry.example/app-migrations:2.1.0"
    assert container["args"] == ["upgrade", "head"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in container["env"]}
    assert env["MIGRATION_DATABASE_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "app-db", "key": "database-url"}
    }
    assert env["MIGRATION_CONFIG"]["value"] == "/app/alembic.ini"
    assert env["MIGRATION_LOCK_TIMEOUT"]["value"] == "60"
    assert env["MIGRATION_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["MIGRATION_JOB_NAME"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.labels['job-name']"}
    }
    assert _events(logs, "job_created") == [
        {"event": "job_created", "level": "info", "job": name, "namespace": NS}
    ]


def test_manifest_job_is_created_under_a_unique_name_in_the_chosen_namespace(
    fake_api: FakeKubeApi, kubeconfig: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(MANIFEST)
    code, _, _ = kube_run(
        [
            "--kubeconfig",
            kubeconfig,
            "-f",
            str(manifest),
            "-n",
            "prod",
            "--image",
            "registry.example/app-migrations:1.2.3",
            *FAST,
        ]
    )
    assert code == 0
    assert fake_api.objects == {}  # no --create-dependencies: only the Job
    [request] = fake_api.requests_for("POST", "/jobs$")
    assert request.path == "/apis/batch/v1/namespaces/prod/jobs"
    job = request.body
    name = job["metadata"]["name"]
    assert name.startswith("app-migrate-") and len(name) == len("app-migrate-") + 5
    assert job["metadata"]["namespace"] == "prod"
    assert job["metadata"]["annotations"] == {"helm.sh/hook": "pre-install,pre-upgrade"}
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/app-migrations:1.2.3"  # --image replaces it
    env = {e["name"]: e for e in container["env"]}
    assert env["MIGRATION_JOB_NAME"]["value"] == name  # Events land on this very Job
    assert env["MIGRATION_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "app-db"


def test_two_runs_create_two_differently_named_jobs(fake_api: FakeKubeApi, kubeconfig: str) -> None:
    for _ in range(2):
        assert kube_run(["--kubeconfig", kubeconfig, "--image", "img", *FAST])[0] == 0
    names = [job["metadata"]["name"] for job in fake_api.created_jobs()]
    assert len(set(names)) == 2


def test_create_dependencies_creates_supported_objects_first_and_skips_the_rest(
    fake_api: FakeKubeApi, kubeconfig: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(MANIFEST)
    fake_api.objects[(NS, "serviceaccounts", "app-migrate")] = {}  # exists already
    code, _, logs = kube_run(
        ["--kubeconfig", kubeconfig, "-f", str(manifest), "--create-dependencies", *FAST]
    )
    assert code == 0
    posts = [r.path for r in fake_api.requests if r.method == "POST"]
    assert posts == [
        f"/api/v1/namespaces/{NS}/serviceaccounts",
        f"/api/v1/namespaces/{NS}/secrets",
        f"/apis/batch/v1/namespaces/{NS}/jobs",
    ]
    assert fake_api.objects[(NS, "secrets", "app-db")]["stringData"] == {
        "url": "postgresql://app:pw@db/app"
    }
    assert [
        (e["event"], e["kind"]) for e in logs if e["event"].startswith(("object_", "manif"))
    ] == [
        ("object_exists", "ServiceAccount"),
        ("object_created", "Secret"),
        ("manifest_object_skipped", "Service"),
    ]


@pytest.mark.timeout(30)
def test_pod_log_lines_reach_stdout_in_order_as_they_come(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    lines = _lines(6)
    fake_api.next_pod = FakePodScript(log_lines=lines, start_after=0.2, line_interval=0.25)

    class TimedOut(io.BytesIO):
        def __init__(self) -> None:
            super().__init__()
            self.stamps: list[tuple[float, bytes]] = []

        def write(self, data: Any) -> int:
            self.stamps.append((time.monotonic(), bytes(data)))
            return super().write(data)

    out = TimedOut()
    code, written, _ = kube_run(["--kubeconfig", kubeconfig, "--image", "img", *FAST], out)
    assert code == 0
    assert written.decode().splitlines() == lines
    first_line_at = next(t for t, data in out.stamps if b"line_0" in data)
    last_line_at = next(t for t, data in out.stamps if b"line_5" in data)
    assert last_line_at - first_line_at > 0.9  # streamed, not copied at the end


def test_exit_code_70_comes_from_the_pods_terminated_state(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    fake_api.next_pod = FakePodScript(
        log_lines=_lines(2), exit_code=70, termination_message=json.dumps(SUMMARY)
    )
    code, _, logs = kube_run(["--kubeconfig", kubeconfig, "--image", "img", *FAST])
    assert code == 70
    [finished] = _events(logs, "kube_run_finished")
    assert finished["exit_code"] == 70
    assert finished["outcome"] == "finished"
    assert finished["runner"] == SUMMARY  # the runner's termination message, parsed
    # --cleanup on-success (the default) keeps a failed Job for `kubectl describe`.
    assert fake_api.requests_for("DELETE", "/jobs/") == []
    assert _events(logs, "job_kept")


def test_exit_code_0_deletes_the_job_with_background_propagation(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    code, _, logs = kube_run(["--kubeconfig", kubeconfig, "--image", "img", *FAST])
    assert code == 0
    [created] = fake_api.created_jobs()
    [delete] = fake_api.requests_for("DELETE", "/jobs/")
    assert delete.path == f"/apis/batch/v1/namespaces/{NS}/jobs/{created['metadata']['name']}"
    assert (
        delete.query.get("propagationPolicy") == ["Background"]
        or (delete.body or {}).get("propagationPolicy") == "Background"
    )
    assert _events(logs, "job_deleted")


@pytest.mark.parametrize(
    ("cleanup", "exit_code", "deleted"),
    [
        ("always", 70, True),
        ("never", 0, False),
        ("on-success", 2, False),
    ],
)
def test_cleanup_flag_decides_whether_the_job_is_deleted(
    fake_api: FakeKubeApi, kubeconfig: str, cleanup: str, exit_code: int, deleted: bool
) -> None:
    fake_api.next_pod = FakePodScript(exit_code=exit_code)
    code, _, _ = kube_run(
        ["--kubeconfig", kubeconfig, "--image", "img", "--cleanup", cleanup, *FAST]
    )
    assert code == exit_code
    assert bool(fake_api.requests_for("DELETE", "/jobs/")) is deleted


@pytest.mark.timeout(30)
def test_a_pod_that_never_starts_exits_75_naming_the_waiting_reason(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    fake_api.next_pod = FakePodScript(never_starts="ImagePullBackOff")
    began = time.monotonic()
    code, written, logs = kube_run(
        ["--kubeconfig", kubeconfig, "--image", "img", "--start-timeout", "0.5", *FAST]
    )
    assert code == 75
    assert time.monotonic() - began < 5
    assert written == b""
    [not_started] = _events(logs, "job_not_started")
    assert not_started["waiting_reason"] == "ImagePullBackOff"
    assert fake_api.requests_for("GET", "/log$") == []


@pytest.mark.timeout(30)
def test_a_job_still_running_at_the_timeout_exits_75(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    fake_api.next_pod = FakePodScript(log_lines=_lines(40), line_interval=0.25)
    began = time.monotonic()
    code, written, logs = kube_run(
        ["--kubeconfig", kubeconfig, "--image", "img", "--timeout", "1", *FAST]
    )
    assert code == 75
    assert time.monotonic() - began < 4
    assert b"line_0" in written and b"line_39" not in written
    assert _events(logs, "job_timeout")


def test_an_unreachable_api_server_exits_69(fake_api: FakeKubeApi, kubeconfig: str) -> None:
    fake_api.down()
    code, _, logs = kube_run(["--kubeconfig", kubeconfig, "--image", "img", *FAST])
    assert code == 69
    [failed] = _events(logs, "kube_run_failed")
    assert failed["outcome"] == "kube_api_unavailable"
    assert "not reachable" in failed["reason"]


def test_rbac_denying_job_creation_exits_77(fake_api: FakeKubeApi, kubeconfig: str) -> None:
    fake_api.forbid("create", "jobs")
    code, _, logs = kube_run(["--kubeconfig", kubeconfig, "--image", "img", *FAST])
    assert code == 77
    [failed] = _events(logs, "kube_run_failed")
    assert failed["outcome"] == "kube_api_forbidden" and "403" in failed["reason"]


def test_a_missing_kubeconfig_exits_78(tmp_path: Path) -> None:
    code, _, logs = kube_run(["--kubeconfig", str(tmp_path / "nope"), "--image", "img"])
    assert code == 78
    assert _events(logs, "kube_run_failed")[0]["outcome"] == "config_error"


def test_neither_manifest_nor_image_is_a_usage_error_exit_2() -> None:
    code, _, logs = kube_run([])
    assert code == 2
    assert "--manifest" in _events(logs, "kube_run_failed")[0]["reason"]


def test_an_unknown_flag_is_a_usage_error_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert kube_run(["--no-such-flag"])[0] == 2


# --- the pure parts ---------------------------------------------------------------------------


def test_read_manifest_picks_the_one_job_of_a_multi_document_file() -> None:
    spec = kube_cli.read_manifest(MANIFEST)
    assert spec.job["metadata"]["name"] == "app-migrate"
    assert [o["kind"] for o in spec.others] == ["ServiceAccount", "Secret", "Service"]


def test_read_manifest_accepts_a_kind_list() -> None:
    listed = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [{"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "m"}}],
    }
    assert kube_cli.read_manifest(json.dumps(listed)).job["metadata"]["name"] == "m"


@pytest.mark.parametrize(
    "text",
    [
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n",
        "kind: Job\nmetadata: {name: a}\n---\nkind: Job\nmetadata: {name: b}\n",
        "kind: [unclosed\n",
    ],
)
def test_read_manifest_without_exactly_one_job_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        kube_cli.read_manifest(text)


def test_unique_name_keeps_within_the_63_character_label_limit() -> None:
    name = kube_cli.unique_name("x" * 80, suffix="abcde")
    assert len(name) == 63 and name.endswith("-abcde")
    assert kube_cli.unique_name("app-migrate", suffix="b2c4d") == "app-migrate-b2c4d"


def test_prepare_job_drops_server_fields_and_keeps_the_rest() -> None:
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "m", "uid": "u", "resourceVersion": "9", "labels": {"a": "b"}},
        "spec": {"template": {"spec": {"containers": [{"name": "migrate", "image": "i"}]}}},
        "status": {"active": 1},
    }
    ready = kube_cli.prepare_job(job, name="m-abcde", namespace="ns")
    assert ready["metadata"] == {"name": "m-abcde", "namespace": "ns", "labels": {"a": "b"}}
    assert "status" not in ready
    assert job["metadata"]["name"] == "m"  # the input is not modified


class _ScriptedJobs:
    """A stand-in for KubeJobs: a Job whose first pod fails and whose retry succeeds."""

    def __init__(self) -> None:
        self.polls = 0
        self.streamed: list[str] = []

    def job_status(self, name: str) -> JobStatus:
        self.polls += 1
        return JobStatus(name, finished=self.polls >= 3, succeeded=self.polls >= 3)

    def job_pods(self, job_name: str, container: str | None) -> list[PodStatus]:
        first = PodStatus("p1", "Failed", True, exit_code=75)
        if self.polls < 2:
            return [first]
        return [first, PodStatus("p2", "Succeeded", True, exit_code=0)]

    def stream_log(
        self,
        pod: str,
        container: str | None,
        out: Any,
        *,
        seconds: float,
        stop: Callable[[], bool],
    ) -> bool:
        self.streamed.append(pod)
        out.write(f"{pod}\n".encode())
        return True


def test_a_retried_pod_is_streamed_too_and_the_last_pods_exit_code_wins() -> None:
    jobs = _ScriptedJobs()
    out = io.BytesIO()
    outcome = kube_cli.follow_job(
        jobs,
        "m",
        container=None,
        out=out,
        start_timeout=5,
        timeout=5,
        poll_interval=0,
        sleep=lambda s: None,
    )
    assert jobs.streamed == ["p1", "p2"]
    assert out.getvalue() == b"p1\np2\n"
    assert (outcome.exit_code, outcome.pod) == (0, "p2")


# --- the real CLI -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_cli_kube_run_writes_only_pod_log_lines_to_stdout_and_events_to_stderr(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    lines = _lines(3)
    fake_api.next_pod = FakePodScript(
        log_lines=lines, exit_code=70, termination_message=json.dumps(SUMMARY)
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner",
            "kube-run",
            "--kubeconfig",
            kubeconfig,
            "--image",
            "img",
            *FAST,
        ],
        env=cli_env(None),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 70, proc.stderr
    assert proc.stdout.splitlines() == lines
    events = [e["event"] for e in parse_events(proc.stderr)]
    assert events[0] == "job_created" and events[-1] == "kube_run_finished"


def test_the_plain_manifests_in_deploy_k8s_run_as_they_are(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    """`kubectl kustomize deploy/k8s | kube-run -f - --create-dependencies`, without kustomize."""
    k8s = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
    if not (k8s / "job.yaml").exists():
        pytest.fail("deploy/k8s/job.yaml is missing")
    rendered = "\n---\n".join(
        (k8s / name).read_text() for name in ("serviceaccount.yaml", "rbac.yaml", "job.yaml")
    )
    manifest = Path(kubeconfig).with_name("rendered.yaml")
    manifest.write_text(rendered)
    code, _, _ = kube_run(
        ["--kubeconfig", kubeconfig, "-f", str(manifest), "--create-dependencies", *FAST]
    )
    assert code == 0
    assert sorted(kind for _, kind, _ in fake_api.objects) == [
        "rolebindings",
        "roles",
        "serviceaccounts",
    ]
    [job] = fake_api.created_jobs()
    assert job["metadata"]["name"].startswith("migration-runner-")
    assert job["spec"]["template"]["spec"]["containers"][0]["name"] == "migrate"


@pytest.mark.chart
@pytest.mark.timeout(120)
def test_the_charts_rendered_job_runs_from_stdin(
    fake_api: FakeKubeApi, kubeconfig: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`helm template ... | kube-run -f -`: the chart's one Job is picked and created."""
    from tests.support_tools import helm

    chart = Path(__file__).resolve().parent.parent / "helm" / "migration-runner"
    rendered = subprocess.run(
        [helm(), "template", "app", str(chart)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    monkeypatch.setattr(sys, "stdin", io.StringIO(rendered))
    code, _, _ = kube_run(["--kubeconfig", kubeconfig, "-f", "-", *FAST])
    assert code == 0
    [job] = fake_api.created_jobs()
    chart_job = kube_cli.read_manifest(rendered).job
    assert job["metadata"]["name"].startswith(f"{chart_job['metadata']['name']}-")
    created = job["spec"]["template"]["spec"]["containers"]
    rendered_containers = chart_job["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"], c.get("args")) for c in created] == [
        (c["name"], c["image"], c.get("args")) for c in rendered_containers
    ]


# --- signals: the real CLI, stopped while it follows the Job ----------------------------------

SIGNALS = [
    pytest.param(signal.SIGTERM, 143, id="SIGTERM"),
    pytest.param(signal.SIGINT, 130, id="SIGINT"),
]
#: From the signal to the process's exit, cleanup included, on a busy CI machine.
PROMPT_EXIT_S = 5.0


def _one_line_then_silence() -> FakePodScript:
    """A pod that logs one line and then nothing for hours: kube-run sits in a blocked read of
    the log stream, which only an interruptible follow can leave at once."""
    return FakePodScript(log_lines=_lines(1000), line_interval=60)


def _start_following(fake_api: FakeKubeApi, kubeconfig: str, *args: str) -> LiveCli:
    run = LiveCli(["kube-run", "--kubeconfig", kubeconfig, "--image", "img", *FAST, *args], None)
    run.wait_for("pod_started", 30)
    deadline = time.monotonic() + 10
    while not fake_api.requests_for("GET", "/log$"):
        assert time.monotonic() < deadline, "kube-run never asked for the pod's log"
        time.sleep(0.05)
    time.sleep(1.0)  # the first line is relayed and the read blocks on the silent stream
    return run


def _assert_one_final_line(result: CliResult, exit_code: int) -> dict[str, Any]:
    """Every stderr line is a JSON event (no traceback), and the last is the only final one."""
    assert all(line.startswith("{") for line in result.stderr.splitlines()), result.stderr
    final = [e for e in result.events if e["event"] in ("kube_run_finished", "kube_run_failed")]
    assert final == [result.events[-1]], result.stderr
    assert final[0]["event"] == "kube_run_finished"
    assert (final[0]["exit_code"], final[0]["outcome"]) == (exit_code, "interrupted")
    return final[0]


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize(("sig", "code"), SIGNALS)
@pytest.mark.parametrize(("cleanup", "deleted"), [("on-success", False), ("always", True)])
def test_a_signal_while_following_the_log_exits_at_once_and_cleans_up_per_the_flag(
    fake_api: FakeKubeApi,
    kubeconfig: str,
    sig: signal.Signals,
    code: int,
    cleanup: str,
    deleted: bool,
) -> None:
    fake_api.next_pod = _one_line_then_silence()
    run = _start_following(fake_api, kubeconfig, "--cleanup", cleanup)
    sent = time.monotonic()
    run.proc.send_signal(sig)
    result = run.finish(30)
    took = time.monotonic() - sent
    assert result.returncode == code, result.stderr
    assert took < PROMPT_EXIT_S, f"kube-run took {took:.1f}s to stop"
    final = _assert_one_final_line(result, code)
    [created] = fake_api.created_jobs()
    assert final["job"] == created["metadata"]["name"]
    assert [e["signal"] for e in result.named("signal_received")] == [sig.name]
    assert result.stdout.splitlines() == _lines(1)  # the log was relayed until the signal
    deletes = fake_api.requests_for("DELETE", "/jobs/")
    if deleted:
        [delete] = deletes
        assert delete.query.get("propagationPolicy") == ["Background"] or (
            (delete.body or {}).get("propagationPolicy") == "Background"
        )
        assert result.named("job_deleted")
    else:  # --cleanup on-success keeps an interrupted Job, as it keeps a failed one
        assert deletes == []
        assert result.named("job_kept")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_second_signal_during_cleanup_leaves_no_traceback_and_the_first_signal_decides(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    fake_api.next_pod = _one_line_then_silence()
    fake_api.slow("delete", "jobs", 2.0)
    run = _start_following(fake_api, kubeconfig, "--cleanup", "always")
    run.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while not fake_api.requests_for("DELETE", "/jobs/"):
        assert time.monotonic() < deadline, "kube-run never started deleting the Job"
        time.sleep(0.02)
    run.proc.send_signal(signal.SIGINT)  # while the (slow) delete is in flight
    result = run.finish(30)
    assert result.returncode == 143, result.stderr
    _assert_one_final_line(result, 143)
    assert result.named("job_deleted")  # the cleanup finished despite the second signal


def test_a_signal_before_the_job_is_created_creates_none_and_exits_with_its_code(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    interruption = kube_cli.Interruption()
    interruption.request("SIGTERM", 143)
    with captured() as logs:
        code = kube_cli.main(
            ["--kubeconfig", kubeconfig, "--image", "img", *FAST],
            stdout=io.BytesIO(),
            interruption=interruption,
        )
    assert code == 143
    assert fake_api.created_jobs() == []
    assert logs[-1]["event"] == "kube_run_finished"
    assert (logs[-1]["outcome"], logs[-1]["job"]) == ("interrupted", None)


def test_a_later_signal_does_not_change_the_exit_code_of_the_first() -> None:
    interruption = kube_cli.Interruption()
    interruption.request("SIGINT", 130)
    interruption.request("SIGTERM", 143)
    assert (interruption.signal_name, interruption.exit_code) == ("SIGINT", 130)


def test_an_interrupted_sleep_wakes_within_the_poll_interval() -> None:
    interruption = kube_cli.Interruption()
    interruption.request("SIGTERM", 143)
    began = time.monotonic()
    interruption.sleep(30)
    assert time.monotonic() - began < kube_cli.SIGNAL_POLL_S + 0.5


# --- secrets: nothing kube-run relays or logs carries a password ------------------------------

#: Has a character that a URL must encode, so the raw and the encoded form differ.
GIVEN_PASSWORD = "Giv3n/pass-w0rd"


@pytest.fixture
def own_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty secret registry for this test, and the suite's own back afterwards."""
    monkeypatch.setattr(redact, "_secrets", set())


def _manifest_with_url(url: str) -> str:
    return f"""\
apiVersion: batch/v1
kind: Job
metadata: {{name: app-migrate}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: migrate
          image: registry.example/app-migrations:1.0.0
          env:
            - name: MIGRATION_DATABASE_URL
              value: "{url}"
"""


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_database_url_in_a_pod_log_line_reaches_stdout_with_its_password_masked(
    fake_api: FakeKubeApi, kubeconfig: str
) -> None:
    leaky = {"event": "settings_dump", "url": "postgresql://app:S3cr3t-pass@db/app"}
    fake_api.next_pod = FakePodScript(log_lines=[*_lines(1), json.dumps(leaky)])
    result = cli_kube_run(["--kubeconfig", kubeconfig, "--image", "img"])
    assert result.returncode == 0, result.stderr
    assert "S3cr3t-pass" not in result.output
    assert result.stdout.splitlines() == [
        *_lines(1),
        json.dumps({**leaky, "url": "postgresql://app:***@db/app"}),
    ]


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("given_by", ["manifest", "flag"])
def test_a_url_password_kube_run_was_given_never_reaches_stdout_or_stderr(
    fake_api: FakeKubeApi, kubeconfig: str, tmp_path: Path, given_by: str
) -> None:
    """The pod echoes the bare password (which only a registered secret can mask)."""
    encoded = quote(GIVEN_PASSWORD, safe="")
    url = f"postgresql://app:{encoded}@db/app"
    if given_by == "manifest":
        manifest = tmp_path / "job.yaml"
        manifest.write_text(_manifest_with_url(url))
        source = ["-f", str(manifest)]
    else:
        source = ["--image", "img", "--env", f"MIGRATION_DATABASE_URL={url}"]
    fake_api.next_pod = FakePodScript(
        log_lines=[f"password {GIVEN_PASSWORD}", f"encoded {encoded}", "done"],
        exit_code=70,
        termination_message=json.dumps({**SUMMARY, "reason": f"bad password {GIVEN_PASSWORD}"}),
    )
    result = cli_kube_run(["--kubeconfig", kubeconfig, *source])
    assert result.returncode == 70, result.stderr
    for form in (GIVEN_PASSWORD, encoded):
        assert form not in result.stdout and form not in result.stderr
    assert result.stdout.splitlines() == ["password ***", "encoded ***", "done"]
    [finished] = result.named("kube_run_finished")
    assert finished["runner"]["reason"] == "bad password ***"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_an_api_error_quoting_the_manifests_database_url_is_masked_on_stderr(
    fake_api: FakeKubeApi, kubeconfig: str, tmp_path: Path
) -> None:
    encoded = quote(GIVEN_PASSWORD, safe="")
    manifest = tmp_path / "job.yaml"
    manifest.write_text(_manifest_with_url(f"postgresql://app:{encoded}@db/app"))
    fake_api.reject_jobs = True
    result = cli_kube_run(["--kubeconfig", kubeconfig, "-f", str(manifest)])
    assert result.returncode == 78, result.stderr
    assert GIVEN_PASSWORD not in result.output and encoded not in result.output
    [failed] = result.named("kube_run_failed")
    assert "postgresql://app:***@db/app" in failed["reason"]  # the message itself came through


def test_a_secret_split_across_two_chunks_of_the_log_stream_is_masked_whole() -> None:
    out = io.BytesIO()
    relay = kube_cli.MaskedLines(out)
    relay.write(b'{"url": "postgresql://app:S3cr')
    relay.write(b't-pass@db/app"}\nno newline at the end: postgresql://u:S3cr3t-pass@h')
    relay.finish()
    assert out.getvalue() == (
        b'{"url": "postgresql://app:***@db/app"}\nno newline at the end: postgresql://u:***@h'
    )


def test_bytes_that_are_not_utf8_pass_the_relay_unchanged() -> None:
    out = io.BytesIO()
    relay = kube_cli.MaskedLines(out)
    relay.write(b"caf\xe9 \xff\n")
    assert out.getvalue() == b"caf\xe9 \xff\n"


@pytest.mark.usefixtures("own_secrets")
def test_url_passwords_are_registered_as_typed_and_decoded() -> None:
    kube_cli.register_url_passwords(
        ["--env", "MIGRATION_DATABASE_URL=postgresql://app:p%40ss-w0rd@db/app and more"]
    )
    assert redact.redact("p%40ss-w0rd p@ss-w0rd") == "*** ***"


@pytest.mark.usefixtures("own_secrets")
def test_the_url_in_a_secrets_base64_data_is_registered() -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "app-db"},
        "data": {"url": base64.b64encode(b"postgresql://app:D4ta-pass@db/app").decode()},
    }
    kube_cli.register_url_passwords(kube_cli.manifest_strings([secret]))
    assert redact.redact("echo D4ta-pass") == "echo ***"

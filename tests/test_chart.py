"""The Helm chart: lints, renders, validates against the Kubernetes schemas, and keeps every safe
default the deploy issue asks for. Each rule is checked on the rendered YAML, not on templates."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from functools import cache
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from runner.errors import PERMANENT_EXIT_CODES
from tests.support_tools import REPO, helm, require_tool, run

pytestmark = pytest.mark.chart

CHART = REPO / "helm" / "migration-runner"
#: The oldest Kubernetes version the chart promises (podFailurePolicy, native sidecars).
OLDEST_KUBE = "1.29.0"
#: Helm's default `--timeout` for install/upgrade, which bounds every hook.
HELM_DEFAULT_TIMEOUT_S = 300
RELEASE = "shop"
NAMESPACE = "prod"

#: Value combinations every structural test runs over.
COMBOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "create_secret": {
        "database": {"createSecret": True, "url": "postgresql+psycopg2://app:pw@db:5432/app"}
    },
    "gitops_hooks_off": {
        "hooks": {"enabled": False},
        "job": {"nameSuffix": "{{ .Values.image.tag }}"},
        "image": {"tag": "1.2.3"},
        "waitInitContainer": {"enabled": True},
    },
    "argo": {"argo": {"enabled": True}},
    "argo_hooks_off": {
        "hooks": {"enabled": False},
        "argo": {"enabled": True},
        "job": {"nameSuffix": "{{ .Values.image.tag }}"},
        "image": {"tag": "1.2.3"},
    },
    "sidecar_quit": {
        "istio": {"disableInjection": False},
        "sidecarQuit": {"istio": True, "cloudSqlProxy": True, "urls": ["http://127.0.0.1:9999/q"]},
    },
    "native_sidecar_and_wait_snippet": {
        "waitInitContainer": {"enabled": True},
        "extraInitContainers": [
            {
                "name": "cloud-sql-proxy",
                "image": "gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.11.0",
                "restartPolicy": "Always",
                "args": ["--port=5432", "project:region:instance"],
                "securityContext": {"runAsNonRoot": True},
            }
        ],
    },
    "events_off": {"events": {"enabled": False}},
    "everything": {
        "image": {"digest": "sha256:" + "a" * 64},
        "imagePullSecrets": [{"name": "regcred"}],
        "extraEnv": [{"name": "FOO", "value": "bar"}],
        "extraEnvFrom": [{"secretRef": {"name": "more"}}],
        "extraVolumes": [{"name": "certs", "secret": {"secretName": "db-ca"}}],
        "extraVolumeMounts": [{"name": "certs", "mountPath": "/certs", "readOnly": True}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "db", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        },
        "podAnnotations": {"example.com/a": "b"},
        "podLabels": {"team": "data"},
        "commonLabels": {"cost-center": "42"},
        "priorityClassName": "high",
        "runner": {"args": ["head"], "workingDir": "/srv/app", "config": "/srv/app/alembic.ini"},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}},
        "job": {"annotations": {"example.com/j": "1"}, "labels": {"tier": "db"}},
    },
}


def _write_values(values: dict[str, Any], tmp: Path) -> Path:
    path = tmp / "values.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


@cache
def _render_text(values_json: str, kube_version: str = OLDEST_KUBE) -> str:
    """`helm template` with the values given on stdin, cached per combination and version."""
    proc = run(
        [
            helm(),
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            kube_version,
            "--values",
            "-",
        ],
        input=yaml.safe_dump(json.loads(values_json)),
    )
    return proc.stdout


def render(
    values: dict[str, Any] | None = None, kube_version: str = OLDEST_KUBE
) -> list[dict[str, Any]]:
    text = _render_text(json.dumps(values or {}, sort_keys=True), kube_version)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_fails(values: dict[str, Any], tmp_path: Path) -> str:
    proc = run(
        [helm(), "template", RELEASE, str(CHART), "-f", str(_write_values(values, tmp_path))],
        check=False,
    )
    assert proc.returncode != 0, (
        f"expected the chart to refuse {values}, it rendered:\n{proc.stdout}"
    )
    return proc.stderr


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def the_job(
    values: dict[str, Any] | None = None, kube_version: str = OLDEST_KUBE
) -> dict[str, Any]:
    jobs = by_kind(render(values, kube_version), "Job")
    assert len(jobs) == 1
    return jobs[0]


def container(job: dict[str, Any]) -> dict[str, Any]:
    containers = job["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "migrate")


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def annotations_of(doc: dict[str, Any]) -> dict[str, str]:
    return doc["metadata"].get("annotations") or {}


# --- lint and schema validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    "combo", ["defaults", "create_secret", "gitops_hooks_off", "argo_hooks_off", "everything"]
)
def test_helm_lint_strict_passes(combo: str, tmp_path: Path) -> None:
    proc = run(
        [helm(), "lint", "--strict", str(CHART), "-f", str(_write_values(COMBOS[combo], tmp_path))]
    )
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_rendered_manifests_validate_against_oldest_supported_kubernetes(combo: str) -> None:
    validator = require_tool("kubernetes-validate")
    text = _render_text(json.dumps(COMBOS[combo], sort_keys=True))
    proc = run([validator, "--strict", "-k", OLDEST_KUBE, "-"], input=text, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout


def test_wait_init_container_snippet_is_a_valid_container(tmp_path: Path) -> None:
    """The snippet users paste into their Deployment validates as a pod's init container."""
    validator = require_tool("kubernetes-validate")
    values = COMBOS["gitops_hooks_off"]
    (cm,) = by_kind(render(values), "ConfigMap")
    snippet = yaml.safe_load(cm["data"]["init-container.yaml"])
    (init,) = snippet
    assert init["args"] == ["wait"]
    assert init["command"] == ["migration-runner"]
    assert env_of(init)["MIGRATION_DATABASE_URL"]["secretKeyRef"]["name"] == f"{RELEASE}-database"
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app"},
        "spec": {
            "initContainers": snippet,
            "containers": [{"name": "app", "image": "app:1"}],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(pod), encoding="utf-8")
    run([validator, "--strict", "-k", OLDEST_KUBE, str(manifest)])


def test_values_schema_rejects_unknown_keys(tmp_path: Path) -> None:
    assert "Additional property imagee is not allowed" in render_fails({"imagee": {}}, tmp_path)
    assert "Additional property lockTimout is not allowed" in render_fails(
        {"runner": {"lockTimout": 5}}, tmp_path
    )
    assert "existingSecretKye" in render_fails({"database": {"existingSecretKye": "u"}}, tmp_path)


def test_values_schema_rejects_wrong_types_and_enums(tmp_path: Path) -> None:
    render_fails({"job": {"backoffLimit": "two"}}, tmp_path)
    render_fails({"runner": {"onDbAhead": "ignore"}}, tmp_path)
    render_fails({"image": {"pullPolicy": "Sometimes"}}, tmp_path)


def _schema_leaves(schema: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        out[path] = sub
        out.update(_schema_leaves(sub, path + "."))
    return out


def test_every_values_key_is_in_the_schema_and_carries_a_comment() -> None:
    """Every key of values.yaml is documented with a comment right above it, except groups
    (their members are documented) and the defaults inside free-form objects."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    known = _schema_leaves(schema)
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    stack: list[tuple[int, str, bool]] = []  # (indent, dotted path, inside a free-form object)
    undocumented, unknown = [], []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent, in_free_form = (stack[-1][1], stack[-1][2]) if stack else ("", False)
        path = f"{parent}.{key}" if parent else key
        free_form = in_free_form or (bool(parent) and "properties" not in known.get(parent, {}))
        stack.append((indent, path, free_form))
        if free_form:
            continue  # a default inside a free-form object (securityContext, resources)
        if path not in known:
            unknown.append(path)
            continue
        if "properties" in known[path]:
            continue  # a group: its members carry the comments
        previous = lines[i - 1].strip() if i else ""
        if not previous.startswith("#"):
            undocumented.append(path)
    assert not unknown, f"values.yaml keys missing from values.schema.json: {unknown}"
    assert not undocumented, f"values.yaml keys without a comment: {undocumented}"


def test_schema_forbids_additional_properties_in_every_group() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["additionalProperties"] is False
    for path, sub in _schema_leaves(schema).items():
        if "properties" in sub:
            assert sub.get("additionalProperties") is False, path


# --- the Job ----------------------------------------------------------------------------------


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_job_never_restarts_in_place_and_retries_little(combo: str) -> None:
    job = the_job(COMBOS[combo])
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert 0 < job["spec"]["backoffLimit"] <= 3
    if not COMBOS[combo].get("argo", {}).get("enabled"):  # Argo CD: see the Argo tests below
        assert job["spec"]["ttlSecondsAfterFinished"] >= 3600, "failed pods' logs stay readable"


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_deadline_is_below_helm_timeout_and_above_the_runners_own_budgets(combo: str) -> None:
    """connect + lock + DDL budget (+ a margin to log and report) < deadline < Helm's 300 s,
    so the runner's own timeouts fire first and Helm reports the Job's failure, not its own."""
    job = the_job(COMBOS[combo])
    deadline = job["spec"]["activeDeadlineSeconds"]
    env = env_of(container(job))
    budget = sum(
        float(env[name])
        for name in (
            "MIGRATION_CONNECT_TIMEOUT",
            "MIGRATION_LOCK_TIMEOUT",
            "MIGRATION_DDL_RETRY_BUDGET",
        )
    )
    margin = 30
    assert budget + margin < deadline < HELM_DEFAULT_TIMEOUT_S, (budget, deadline)
    assert float(env["MIGRATION_DDL_LOCK_TIMEOUT"]) <= float(env["MIGRATION_DDL_RETRY_BUDGET"])


def test_chart_refuses_timeouts_that_exceed_the_deadline(tmp_path: Path) -> None:
    err = render_fails({"runner": {"lockTimeout": 300}}, tmp_path)
    assert "must be below job.activeDeadlineSeconds" in err


def test_pod_failure_policy_fails_fast_on_permanent_exit_codes_only() -> None:
    job = the_job()
    rules = job["spec"]["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert len(fail) == 1
    on_codes = fail[0]["onExitCodes"]
    assert on_codes["operator"] == "In"
    assert set(on_codes["values"]) == {int(c) for c in PERMANENT_EXIT_CODES}
    assert on_codes["containerName"] == container(job)["name"]
    assert not {69, 75, 143} & set(on_codes["values"]), "transient codes are retried"
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert ignore[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never", (
        "podFailurePolicy requires restartPolicy Never"
    )


def test_job_is_a_pre_install_pre_upgrade_hook_that_keeps_failed_pods() -> None:
    ann = annotations_of(the_job())
    assert set(ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert ann["helm.sh/hook-weight"] == "0"
    # before-hook-creation only: a failed Job (and its pod's logs) stays until the next release.
    assert ann["helm.sh/hook-delete-policy"] == "before-hook-creation"


@pytest.mark.parametrize("combo", ["defaults", "create_secret", "argo"])
def test_everything_the_job_needs_is_a_hook_with_a_lower_weight(combo: str) -> None:
    """A pre-install hook runs before the release's ordinary resources exist: the Secret,
    ServiceAccount, Role and RoleBinding must be hooks too, created before the Job."""
    docs = render(COMBOS[combo])
    job = by_kind(docs, "Job")[0]
    job_weight = int(annotations_of(job)["helm.sh/hook-weight"])
    supporting = [d for d in docs if d["kind"] != "Job"]
    kinds = {d["kind"] for d in supporting}
    assert {"ServiceAccount", "Role", "RoleBinding"} <= kinds
    if combo == "create_secret":
        assert "Secret" in kinds
    for doc in supporting:
        ann = annotations_of(doc)
        assert ann.get("helm.sh/hook") == annotations_of(job)["helm.sh/hook"], doc["kind"]
        assert int(ann["helm.sh/hook-weight"]) < job_weight, doc["kind"]
        assert "before-hook-creation" in ann["helm.sh/hook-delete-policy"]
        if combo == "argo":
            assert int(ann["argocd.argoproj.io/sync-wave"]) < int(
                annotations_of(job)["argocd.argoproj.io/sync-wave"]
            )
            assert ann["argocd.argoproj.io/hook"] == "PreSync"


def test_created_secret_is_what_the_job_reads() -> None:
    docs = render(COMBOS["create_secret"])
    (secret,) = by_kind(docs, "Secret")
    ref = env_of(container(by_kind(docs, "Job")[0]))["MIGRATION_DATABASE_URL"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]


def test_database_url_comes_from_an_existing_secret_by_default() -> None:
    docs = render()
    assert not by_kind(docs, "Secret")
    ref = env_of(container(the_job()))["MIGRATION_DATABASE_URL"]["secretKeyRef"]
    assert ref == {"name": f"{RELEASE}-database", "key": "url"}


def test_create_secret_without_url_is_refused(tmp_path: Path) -> None:
    assert "needs database.url" in render_fails({"database": {"createSecret": True}}, tmp_path)


def test_gitops_switch_removes_every_helm_hook_annotation() -> None:
    docs = render(COMBOS["gitops_hooks_off"])
    for doc in docs:
        assert not any(k.startswith("helm.sh/hook") for k in annotations_of(doc)), doc["kind"]
    assert by_kind(docs, "Job")[0]["metadata"]["name"] == f"{RELEASE}-migration-runner-1-2-3", (
        "with hooks off each image gets its own Job (a Job's pod template is immutable)"
    )


def _policies(annotation: str) -> set[str]:
    return {p.strip() for p in annotation.split(",")}


@pytest.mark.parametrize("combo", ["argo", "argo_hooks_off"])
def test_argo_annotations_make_the_job_a_presync_hook(combo: str) -> None:
    ann = annotations_of(the_job(COMBOS[combo]))
    assert ann["argocd.argoproj.io/hook"] == "PreSync"
    assert _policies(ann["argocd.argoproj.io/hook-delete-policy"]) == {
        "BeforeHookCreation",
        "HookSucceeded",
    }


@pytest.mark.parametrize("kube_version", ["1.28.0", OLDEST_KUBE, "1.34.0"])
@pytest.mark.parametrize("combo", ["argo", "argo_hooks_off"])
def test_argo_job_has_no_ttl_and_argo_deletes_what_succeeded(combo: str, kube_version: str) -> None:
    """Argo CD loses track of a hook Job the TTL controller deletes (the sync hangs waiting for
    it, or the app shows OutOfSync/Missing): with argo.enabled there is no TTL, and Argo CD's own
    delete policy removes the Job (and what it needs) once it succeeded."""
    docs = render(COMBOS[combo], kube_version)
    (job,) = by_kind(docs, "Job")
    assert "ttlSecondsAfterFinished" not in job["spec"]
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            continue  # the wait snippet is not a hook
        policies = _policies(annotations_of(doc)["argocd.argoproj.io/hook-delete-policy"])
        assert "HookSucceeded" in policies, doc["kind"]
        assert "BeforeHookCreation" in policies, f"{doc['kind']}: a rerun replaces a failed one"


@pytest.mark.parametrize("combo", ["defaults", "gitops_hooks_off", "create_secret"])
def test_without_argo_the_ttl_is_kept_and_no_argo_annotation_appears(combo: str) -> None:
    docs = render(COMBOS[combo])
    assert by_kind(docs, "Job")[0]["spec"]["ttlSecondsAfterFinished"] == 86400
    for doc in docs:
        assert not any(k.startswith("argocd.argoproj.io/") for k in annotations_of(doc)), doc


def test_argo_delete_policy_without_hook_succeeded_is_refused(tmp_path: Path) -> None:
    err = render_fails(
        {"argo": {"enabled": True, "hookDeletePolicy": "BeforeHookCreation"}}, tmp_path
    )
    assert "must include HookSucceeded" in err
    # Unknown policy names are a schema error, not a silently ignored annotation.
    render_fails({"argo": {"hookDeletePolicy": "HookSucceded"}}, tmp_path)


@pytest.mark.parametrize("argo", [False, True])
@pytest.mark.parametrize(
    ("kube_version", "expected"),
    [("1.27.0", None), ("1.28.9", None), ("1.29.0", "Failed"), ("1.31.2", "Failed")],
)
def test_pod_replacement_policy_failed_from_kubernetes_1_29(
    kube_version: str, expected: str | None, argo: bool
) -> None:
    """A retry starts only after the previous pod fully terminated (it may still be rolling back
    and releasing the lock). Beta and on by default from 1.29; alpha behind a gate in 1.28."""
    job = the_job({"argo": {"enabled": argo}}, kube_version)
    assert job["spec"].get("podReplacementPolicy") == expected
    without_pfp = the_job({"job": {"podFailurePolicy": False}}, kube_version)
    assert without_pfp["spec"].get("podReplacementPolicy") == expected


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_pod_security_standards_restricted(combo: str) -> None:
    job = the_job(COMBOS[combo])
    pod = job["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert isinstance(psc["runAsUser"], int) and psc["runAsUser"] > 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(job)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc.get("privileged", False) is False


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_read_only_root_has_a_writable_tmp_emptydir(combo: str) -> None:
    job = the_job(COMBOS[combo])
    mounts = {m["mountPath"]: m["name"] for m in container(job)["volumeMounts"]}
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]  # noqa: S108 (the path in the pod, not here)


def test_kubernetes_events_env_downward_api_and_termination_message() -> None:
    c = container(the_job())
    env = env_of(c)
    assert env["MIGRATION_KUBE_EVENTS"] == "on"
    assert env["MIGRATION_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["MIGRATION_POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["MIGRATION_JOB_NAME"] == {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert env["MIGRATION_TERMINATION_MESSAGE_PATH"] == c["terminationMessagePath"]


def test_role_grants_exactly_what_the_events_feature_needs() -> None:
    docs = render()
    (role,) = by_kind(docs, "Role")
    grants = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert grants == {
        ("", "events", "create"),
        ("", "events", "patch"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
        ("", "pods", "get"),
        ("batch", "jobs", "get"),
    }
    (binding,) = by_kind(docs, "RoleBinding")
    (sa,) = by_kind(docs, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"]
    job = by_kind(docs, "Job")[0]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_events_off_turns_off_the_feature_its_rbac_and_the_token() -> None:
    docs = render(COMBOS["events_off"])
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    job = by_kind(docs, "Job")[0]
    assert env_of(container(job))["MIGRATION_KUBE_EVENTS"] == "off"
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_rbac_and_service_account_can_be_switched_off() -> None:
    docs = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "x"}})
    assert {d["kind"] for d in docs} == {"Job"}
    assert by_kind(docs, "Job")[0]["spec"]["template"]["spec"]["serviceAccountName"] == "x"


def test_istio_injection_disabled_by_default_and_optional() -> None:
    meta = the_job()["spec"]["template"]["metadata"]
    assert meta["annotations"]["sidecar.istio.io/inject"] == "false"
    assert meta["labels"]["sidecar.istio.io/inject"] == "false"
    meta = the_job(COMBOS["sidecar_quit"])["spec"]["template"]["metadata"]
    assert "sidecar.istio.io/inject" not in (meta.get("annotations") or {})
    assert "sidecar.istio.io/inject" not in meta["labels"]


def test_without_sidecar_quit_the_runner_is_pid_1_of_its_container() -> None:
    c = container(the_job())
    assert c["command"] == ["migration-runner"]
    assert c["args"] == ["upgrade"]


def test_sidecar_quit_wraps_the_runner_and_names_every_quit_url() -> None:
    c = container(the_job(COMBOS["sidecar_quit"]))
    assert c["command"][:2] == ["/bin/sh", "-c"]
    assert c["command"][3:] == ["migration-runner", "migration-runner"]
    assert c["args"] == ["upgrade"]
    assert env_of(c)["SIDECAR_QUIT_URLS"].split() == [
        "http://127.0.0.1:15020/quitquitquit",
        "http://127.0.0.1:9091/quitquitquit",
        "http://127.0.0.1:9999/q",
    ]


class _QuitRecorder(BaseHTTPRequestHandler):
    posts: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        type(self).posts.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


def _wrapper(values: dict[str, Any]) -> tuple[str, dict[str, str]]:
    c = container(the_job(values))
    return c["command"][2], {"SIDECAR_QUIT_URLS": env_of(c)["SIDECAR_QUIT_URLS"]}


@pytest.mark.parametrize("exit_code", [0, 70, 75])
def test_sidecar_quit_wrapper_keeps_the_exit_code_and_posts_quit(exit_code: int) -> None:
    """The shell the chart renders, run for real: the runner's exit code comes out unchanged
    and the sidecar's quit URL receives a POST after the runner exited."""
    server = HTTPServer(("127.0.0.1", 0), _QuitRecorder)
    _QuitRecorder.posts = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/quitquitquit"
        script, env = _wrapper({"sidecarQuit": {"urls": [url]}})
        env = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        proc = subprocess.run(
            ["/bin/sh", "-c", script, "migration-runner", "sh", "-c", f"exit {exit_code}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == exit_code, proc.stderr
        assert _QuitRecorder.posts == ["/quitquitquit"]
    finally:
        server.shutdown()


def test_sidecar_quit_wrapper_forwards_sigterm_to_the_runner() -> None:
    script, env = _wrapper({"sidecarQuit": {"urls": ["http://127.0.0.1:9/unreachable"]}})
    env = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    child = "trap 'exit 143' TERM; echo ready; while :; do sleep 0.1; done"
    proc = subprocess.Popen(
        ["/bin/sh", "-c", script, "migration-runner", "sh", "-c", child],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "sidecar quit failed" in err, "an unreachable sidecar is reported, not fatal"


# --- labels and names -------------------------------------------------------------------------


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_every_resource_has_the_recommended_labels(combo: str) -> None:
    docs = render(COMBOS[combo])
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "migration-runner"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert "app.kubernetes.io/version" in labels
        assert labels["app.kubernetes.io/component"] == "database-migration"
        assert doc["metadata"]["namespace"] == NAMESPACE
    pod_labels = by_kind(docs, "Job")[0]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app.kubernetes.io/instance"] == RELEASE


def test_surface_values_reach_the_pod() -> None:
    docs = render(COMBOS["everything"])
    job = by_kind(docs, "Job")[0]
    pod = job["spec"]["template"]["spec"]
    c = container(job)
    assert c["image"] == "ghcr.io/migration-runner/migration-runner@sha256:" + "a" * 64
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert env_of(c)["FOO"] == "bar"
    assert env_of(c)["MIGRATION_CONFIG"] == "/srv/app/alembic.ini"
    assert c["workingDir"] == "/srv/app"
    assert c["args"] == ["upgrade", "head"]
    assert c["envFrom"] == [{"secretRef": {"name": "more"}}]
    assert {"name": "certs", "mountPath": "/certs", "readOnly": True} in c["volumeMounts"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "db"
    assert "nodeAffinity" in pod["affinity"]
    assert pod["priorityClassName"] == "high"
    assert job["spec"]["template"]["metadata"]["annotations"]["example.com/a"] == "b"
    assert job["spec"]["template"]["metadata"]["labels"]["team"] == "data"
    assert annotations_of(job)["example.com/j"] == "1"
    assert all(d["metadata"]["labels"]["cost-center"] == "42" for d in docs)
    (sa,) = by_kind(docs, "ServiceAccount")
    assert annotations_of(sa)["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam")
    assert c["resources"]["limits"]["memory"]


def test_native_sidecar_goes_into_init_containers() -> None:
    job = the_job(COMBOS["native_sidecar_and_wait_snippet"])
    (init,) = job["spec"]["template"]["spec"]["initContainers"]
    assert init["restartPolicy"] == "Always"


def test_alembic_options_reach_the_runner_as_the_chart_renders_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """-x values (with spaces and commas), the ini section, the tag, the exported URL names
    and the history table, loaded from the rendered environment by the runner's settings."""
    values = {
        "runner": {
            "xArgs": ["tenant=acme", "note=a b, c"],
            "iniSection": "shop",
            "tag": "blue",
            "exportUrlAs": ["APP_DATABASE_URL"],
            "historyTable": "off",
        }
    }
    env = env_of(container(the_job(values)))
    for var in list(__import__("os").environ):
        if var.startswith("MIGRATION_"):
            monkeypatch.delenv(var)
    for name, value in env.items():
        if name.startswith("MIGRATION_") and isinstance(value, str):
            monkeypatch.setenv(name, value)
    from runner.settings import load_settings

    settings = load_settings()
    assert settings.x_args == ("tenant=acme", "note=a b, c")
    assert (settings.ini_section, settings.tag) == ("shop", "blue")
    assert settings.export_url_as == ("APP_DATABASE_URL",)
    assert settings.history_table == "off"
    assert settings.image and "migration-runner" in settings.image, "recorded in the history"
    defaults = env_of(container(the_job({})))
    assert "MIGRATION_X_ARGS" not in defaults and "MIGRATION_TAG" not in defaults
    assert defaults["MIGRATION_HISTORY_TABLE"] == "migration_runner_history"

"""`migration-runner kube-run`: run the migration Job from CI and exit with the runner's code.

Creates the Job (from a manifest, e.g. `helm template` output or `deploy/k8s`, or from flags)
under a unique name, copies its pod's JSON log lines to stdout as they come, waits for the Job
to finish, and exits with the exit code of the runner's container (its terminated state):

    0..143  the runner's own exit code (see the README's exit-code table)
    75      the Job's pod did not start within --start-timeout, or the Job did not finish
            within --timeout
    69      the Kubernetes API server is not reachable
    77      the API refused a call (RBAC); 78 bad manifest or kubeconfig, or the API rejected it

Progress goes to stderr as log events; stdout carries only the pod's log, each line masked
(`runner.redact`) like the runner's own output. SIGTERM/SIGINT (an `Interruption`, set by the
CLI's handler) stop the follow within moments; `--cleanup` then decides about the Job, and the
exit code is 143/130. The module imports `runner.kube` (and so `kubernetes`) only inside `main`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import json
import re
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

import yaml

from runner import redact
from runner.errors import ConfigError, ExitCode, RunnerError, UsageError
from runner.logs import log

if TYPE_CHECKING:
    from runner.kube import ByteSink, JobStatus, KubeJobs, PodStatus


#: Kubernetes label values (and so Job names, which become the `job-name` pod label) max out at 63.
MAX_JOB_NAME = 63
#: The alphabet Kubernetes uses for generated name suffixes (no vowels, no look-alikes).
SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
SUFFIX_LENGTH = 5
DEFAULT_NAME = "migration-runner"
DEFAULT_CONTAINER = "migrate"
DEFAULT_SECRET_KEY = "url"  # noqa: S105  # a key name in the Secret, not a secret
#: How soon a wait notices a signal (the handler itself only sets a flag).
SIGNAL_POLL_S = 0.1
#: A log line longer than this is relayed in masked pieces instead of held without bound.
MAX_HELD_LINE = 1 << 20
#: A URL from its scheme on, wherever it sits (`NAME=postgresql://...`, a quoted YAML value).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migration-runner kube-run",
        description="Create the migration Job, stream its log, exit with the runner's exit code.",
    )
    source = parser.add_argument_group("the Job (a manifest, or flags)")
    source.add_argument(
        "-f",
        "--manifest",
        metavar="PATH",
        help="YAML file (or - for stdin) holding the Job, e.g. `helm template` output; when it "
        "holds several objects, the one Job is picked",
    )
    source.add_argument(
        "--create-dependencies",
        action="store_true",
        help="also create the manifest's ServiceAccounts, Secrets, ConfigMaps, Roles and "
        "RoleBindings that do not exist yet (existing ones are left as they are)",
    )
    source.add_argument("--image", help="runner image; with --manifest it replaces the image")
    source.add_argument(
        "--secret",
        metavar="NAME[:KEY]",
        help=f"Secret holding MIGRATION_DATABASE_URL (key defaults to {DEFAULT_SECRET_KEY!r})",
    )
    source.add_argument("--config", metavar="PATH", help="MIGRATION_CONFIG inside the image")
    source.add_argument(
        "--command",
        default="upgrade",
        metavar="ARGS",
        help="runner arguments, shell-quoted (default: %(default)s)",
    )
    source.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment variable for the runner (repeatable)",
    )
    source.add_argument("--service-account", help="the pod's ServiceAccount")
    source.add_argument(
        "--name",
        default=None,
        help=f"base name of the Job (default: the manifest's, or {DEFAULT_NAME!r}); a random "
        "suffix is always added",
    )
    cluster = parser.add_argument_group("the cluster")
    cluster.add_argument("-n", "--namespace", help="default: the kubeconfig context's")
    cluster.add_argument("--kubeconfig", help="default: $KUBECONFIG, then ~/.kube/config")
    cluster.add_argument("--context", help="kubeconfig context (default: the current one)")
    cluster.add_argument(
        "--in-cluster",
        action="store_true",
        help="use the in-cluster config (kube-run itself runs in a pod)",
    )
    waiting = parser.add_argument_group("waiting and cleanup")
    waiting.add_argument(
        "--container",
        default=None,
        help="the runner's container (default: the pod's first container)",
    )
    waiting.add_argument(
        "--start-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up (exit 75) when the pod has not started by then (default: %(default)s)",
    )
    waiting.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="give up (exit 75) when the Job has not finished by then (default: %(default)s)",
    )
    waiting.add_argument(
        "--cleanup",
        choices=("always", "on-success", "never"),
        default="on-success",
        help="delete the Job (and its pods) afterwards (default: %(default)s)",
    )
    waiting.add_argument("--poll-interval", type=float, default=2.0, help=argparse.SUPPRESS)
    return parser


# --- the Job's body (pure) ------------------------------------------------------------------


@dataclass
class JobSpec:
    job: dict[str, Any]
    #: Other objects of the manifest, created before the Job with --create-dependencies.
    others: list[dict[str, Any]] = field(default_factory=list)


def read_manifest(text: str) -> JobSpec:
    """The one Job of a (multi-document) YAML manifest, and the other objects next to it."""
    try:
        docs = [doc for doc in yaml.safe_load_all(text) if doc]
    except yaml.YAMLError as exc:
        raise ConfigError(f"the manifest is not valid YAML: {str(exc).splitlines()[0]}") from exc
    objects: list[dict[str, Any]] = []
    for doc in docs:
        if not isinstance(doc, dict):
            raise ConfigError("the manifest holds something that is not a Kubernetes object")
        objects.extend((doc.get("items") or []) if doc.get("kind") == "List" else [doc])
    jobs = [obj for obj in objects if obj.get("kind") == "Job"]
    if len(jobs) != 1:
        names = ", ".join(str(j.get("metadata", {}).get("name")) for j in jobs) or "none"
        raise ConfigError(f"the manifest must hold exactly one Job; it holds {len(jobs)} ({names})")
    return JobSpec(jobs[0], [obj for obj in objects if obj is not jobs[0]])


def job_from_flags(
    *,
    image: str,
    secret: str | None,
    config: str | None,
    command: Sequence[str],
    env: Sequence[str],
    service_account: str | None,
    name: str,
    active_deadline_s: int | None,
) -> dict[str, Any]:
    """A Job running the runner once (no retries: its exit code decides), hardened."""
    environment: list[dict[str, Any]] = []
    if secret:
        secret_name, _, key = secret.partition(":")
        environment.append(
            {
                "name": "MIGRATION_DATABASE_URL",
                "valueFrom": {
                    "secretKeyRef": {"name": secret_name, "key": key or DEFAULT_SECRET_KEY}
                },
            }
        )
    if config:
        environment.append({"name": "MIGRATION_CONFIG", "value": config})
    for item in env:
        var, sep, value = item.partition("=")
        if not sep or not var:
            raise UsageError(f"--env {item!r}: expected NAME=VALUE")
        environment.append({"name": var, "value": value})
    environment += [
        {"name": "MIGRATION_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": "MIGRATION_POD_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
        {
            "name": "MIGRATION_JOB_NAME",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}},
        },
    ]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": DEFAULT_CONTAINER,
                "image": image,
                "args": list(command),
                "env": environment,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    }
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    spec: dict[str, Any] = {"backoffLimit": 0, "template": {"spec": pod_spec}}
    if active_deadline_s:
        spec["activeDeadlineSeconds"] = active_deadline_s
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": DEFAULT_NAME}},
        "spec": spec,
    }


def unique_name(base: str, suffix: str | None = None) -> str:
    """`base-xxxxx`, cut so that the whole stays a valid label value (63 characters)."""
    suffix = suffix or "".join(secrets.choice(SUFFIX_ALPHABET) for _ in range(SUFFIX_LENGTH))
    return f"{base[: MAX_JOB_NAME - len(suffix) - 1].rstrip('-.')}-{suffix}"


def prepare_job(
    job: dict[str, Any],
    *,
    name: str,
    namespace: str,
    image: str | None = None,
    container: str | None = None,
) -> dict[str, Any]:
    """A copy of `job` ready to create: new name and namespace, no server-set fields.

    A literal MIGRATION_JOB_NAME in the pod template is set to the new name so that the
    runner's Events land on this Job.
    """
    job = copy.deepcopy(job)
    metadata = job.setdefault("metadata", {})
    for server_field in (
        "generateName",
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "managedFields",
        "selfLink",
    ):
        metadata.pop(server_field, None)
    metadata["name"] = name
    metadata["namespace"] = namespace
    job.pop("status", None)
    containers = job.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
    if not containers:
        raise ConfigError("the Job has no containers (spec.template.spec.containers)")
    for index, spec in enumerate(containers):
        is_runner = spec.get("name") == container if container else index == 0
        if is_runner and image:
            spec["image"] = image
        for var in spec.get("env") or []:
            if var.get("name") == "MIGRATION_JOB_NAME" and "value" in var:
                var["value"] = name
    return job


# --- secrets --------------------------------------------------------------------------------


def register_url_passwords(texts: Iterable[str]) -> None:
    """Remember the password of every `scheme://user:password@` in `texts` (flags, a manifest),
    as typed and decoded, so that it is masked wherever it shows up later: in the pod's log, in
    an API error that quotes the manifest, in kube-run's own events."""
    for text in texts:
        for match in _URL.finditer(text):
            redact.register_url_text(match.group())
            try:
                password = urlsplit(match.group()).password
            except ValueError:  # not a URL after all (e.g. an unbalanced "[")
                continue
            if password:
                redact.register(unquote(password))


def manifest_strings(objects: Iterable[Any]) -> Iterator[str]:
    """Every string in the manifest's objects, and the decoded `data` values of its Secrets."""
    for obj in objects:
        yield from _strings(obj)
        if isinstance(obj, dict) and obj.get("kind") == "Secret":
            for value in (obj.get("data") or {}).values():
                try:
                    decoded = base64.b64decode(value)
                except (binascii.Error, TypeError, ValueError):
                    continue
                yield decoded.decode("utf-8", "replace")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


class MaskedLines:
    """Relays a pod's log to `out` with every line masked (`redact.redact`) first.

    A line is held until its newline arrives, so that a secret split across two chunks of the
    stream is masked whole; `finish` relays a last line that has no newline."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._pending = b""

    def write(self, data: bytes, /) -> int:
        self._pending += data
        complete, newline, rest = self._pending.rpartition(b"\n")
        if newline:
            self._out.write(_masked(complete + newline))
            self._pending = rest
        if len(self._pending) > MAX_HELD_LINE:
            self._out.write(_masked(self._pending))
            self._pending = b""
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def finish(self) -> None:
        if self._pending:
            self._out.write(_masked(self._pending))
            self._pending = b""
        self._out.flush()


def _masked(data: bytes) -> bytes:
    # surrogateescape: bytes that are not UTF-8 come out exactly as they went in.
    text = data.decode("utf-8", "surrogateescape")
    return redact.redact(text).encode("utf-8", "surrogateescape")


# --- following the Job ----------------------------------------------------------------------


class Interruption:
    """Set by the CLI's SIGTERM/SIGINT handler; every wait of kube-run polls it.

    It holds plain attributes only: the handler runs in the main thread between two of
    kube-run's own bytecodes, and taking a lock there (logging's, a threading.Event's) could
    deadlock on a lock that this very thread already holds.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.exit_code = 0

    def request(self, signal_name: str, exit_code: int) -> None:
        """The first signal decides the exit code; a second one changes nothing."""
        if self.signal_name is None:
            self.exit_code = exit_code
            self.signal_name = signal_name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def sleep(self, seconds: float) -> None:
        """Sleep `seconds`, or less: within SIGNAL_POLL_S of a signal."""
        deadline = time.monotonic() + seconds
        while not self.requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, SIGNAL_POLL_S))


class JobsApi(Protocol):
    """What `follow_job` needs of `runner.kube.KubeJobs` (a test can pass something simpler)."""

    def job_status(self, name: str) -> JobStatus: ...

    def job_pods(self, job_name: str, container: str | None) -> list[PodStatus]: ...

    def stream_log(
        self,
        pod: str,
        container: str | None,
        out: ByteSink,
        *,
        seconds: float,
        stop: Callable[[], bool],
    ) -> bool: ...


@dataclass
class Outcome:
    exit_code: int
    #: kube-run's own outcome: finished, not_started, timeout, interrupted.
    outcome: str
    pod: str | None = None
    #: The runner's termination message (its run summary), parsed when it is JSON.
    runner: Any = None


def follow_job(
    jobs: JobsApi,
    name: str,
    *,
    container: str | None,
    out: BinaryIO,
    start_timeout: float,
    timeout: float,
    poll_interval: float,
    interruption: Interruption | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] | None = None,
) -> Outcome:
    """Stream each pod's log (masked) as it starts; when the Job finishes, the runner's exit
    code. A signal (`interruption`) ends the follow within moments: outcome "interrupted"."""
    stopping = interruption or Interruption()
    sleep = sleep or stopping.sleep
    began = clock()
    streamed: list[str] = []
    last_waiting: str | None = None
    while True:
        status = jobs.job_status(name)
        pods = jobs.job_pods(name, container)
        for pod in pods:
            if stopping.requested:
                break
            if pod.started and pod.name not in streamed:
                streamed.append(pod.name)
                log.info("pod_started", job=name, pod=pod.name)
                # Bounded by --timeout: when it runs out, the check below ends the run.
                remaining = max(timeout - (clock() - began), 0.1)
                relay = MaskedLines(out)
                try:
                    jobs.stream_log(
                        pod.name,
                        container,
                        relay,
                        seconds=remaining,
                        stop=lambda: stopping.requested,
                    )
                finally:
                    relay.finish()
            elif not pod.started and pod.waiting_reason and pod.waiting_reason != last_waiting:
                last_waiting = pod.waiting_reason
                log.info("pod_waiting", job=name, pod=pod.name, reason=pod.waiting_reason)
        if status.finished:
            return _finished(status, pods, started=bool(streamed))
        if stopping.requested:
            return _interrupted(stopping, name, pod=streamed[-1] if streamed else None)
        elapsed = clock() - began
        if not streamed and elapsed >= start_timeout:
            log.error(
                "job_not_started",
                job=name,
                start_timeout_s=start_timeout,
                waiting_reason=last_waiting,
            )
            return Outcome(ExitCode.TEMPORARY, "not_started")
        if elapsed >= timeout:
            log.error("job_timeout", job=name, timeout_s=timeout)
            return Outcome(ExitCode.TEMPORARY, "timeout", pod=streamed[-1] if streamed else None)
        sleep(poll_interval)


def _interrupted(interruption: Interruption, job: str | None, *, pod: str | None) -> Outcome:
    log.warning(
        "signal_received",
        signal=interruption.signal_name,
        job=job,
        action="stopped following the Job; --cleanup decides whether it is deleted"
        if job
        else "no Job was created",
    )
    return Outcome(interruption.exit_code, "interrupted", pod=pod)


def _finished(status: JobStatus, pods: list[PodStatus], *, started: bool) -> Outcome:
    terminated = [pod for pod in pods if pod.exit_code is not None]
    if terminated:
        last = terminated[-1]
        return Outcome(last.exit_code or 0, "finished", last.name, _parse(last.termination_message))
    if status.succeeded:
        return Outcome(ExitCode.OK, "finished")
    if not started:
        log.error("job_failed_before_start", job=status.name, reason=status.reason)
        return Outcome(ExitCode.TEMPORARY, "not_started")
    log.error("exit_code_unknown", job=status.name, reason=status.reason)
    return Outcome(ExitCode.INTERNAL, "exit_code_unknown")


def _parse(message: str | None) -> Any:
    if not message:
        return None
    try:
        return json.loads(message)
    except ValueError:
        return message.strip().splitlines()[-1] if message.strip() else None


# --- the command ----------------------------------------------------------------------------


def main(
    argv: list[str],
    *,
    stdout: BinaryIO | None = None,
    interruption: Interruption | None = None,
) -> int:
    """Run `kube-run ARGV`; returns the exit code (the CLI exits with it). The CLI's signal
    handler sets `interruption`."""
    # Before anything is written: a usage error may echo a flag holding a database URL.
    register_url_passwords(argv)
    parser = build_parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else int(ExitCode.USAGE)
    out = stdout if stdout is not None else sys.stdout.buffer
    try:
        return _run(options, out, interruption or Interruption())
    except RunnerError as exc:
        log.error(
            "kube_run_failed",
            outcome=exc.outcome,
            reason=exc.reason,
            exit_code=int(exc.exit_code),
            **exc.fields,
        )
        return int(exc.exit_code)


def _job_spec(options: argparse.Namespace) -> JobSpec:
    if options.manifest:
        if options.secret or options.config or options.env or options.service_account:
            raise UsageError("--secret, --config, --env, --service-account need no --manifest")
        try:
            text = (
                sys.stdin.read()
                if options.manifest == "-"
                else Path(options.manifest).read_text(encoding="utf-8")
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot read the manifest {options.manifest}: {exc.strerror}"
            ) from exc
        register_url_passwords([text])  # before a parse error can quote it
        spec = read_manifest(text)
        register_url_passwords(manifest_strings([spec.job, *spec.others]))
        return spec
    if not options.image:
        raise UsageError("kube-run needs --manifest PATH, or --image (with --secret)")
    try:
        command = shlex.split(options.command)
    except ValueError as exc:
        raise UsageError(f"--command: {exc}") from exc
    return JobSpec(
        job_from_flags(
            image=options.image,
            secret=options.secret,
            config=options.config,
            command=command,
            env=options.env,
            service_account=options.service_account,
            name=options.name or DEFAULT_NAME,
            active_deadline_s=int(options.timeout) if options.timeout else None,
        )
    )


def _run(options: argparse.Namespace, out: BinaryIO, interruption: Interruption) -> int:
    if options.start_timeout <= 0 or options.timeout <= 0 or options.poll_interval <= 0:
        raise UsageError("--start-timeout, --timeout and --poll-interval must be positive")
    spec = _job_spec(options)

    from runner import kube  # kubernetes is imported on this path only

    api, default_namespace = kube.load_api_client(
        in_cluster=options.in_cluster,
        kubeconfig=options.kubeconfig,
        context=options.context,
        connect_retries=2,
    )
    namespace = options.namespace or default_namespace
    jobs = kube.KubeJobs(api, namespace)
    try:
        if options.create_dependencies:
            _create_dependencies(jobs, spec.others, kube.CREATABLE_KINDS)
        base = options.name or spec.job.get("metadata", {}).get("name") or DEFAULT_NAME
        body = prepare_job(
            spec.job,
            name=unique_name(base),
            namespace=namespace,
            image=options.image if options.manifest else None,
            container=options.container,
        )
        if interruption.requested:  # nothing to follow and nothing to clean up
            outcome = _interrupted(interruption, None, pod=None)
            _report_finished(None, namespace, outcome)
            return outcome.exit_code
        name = jobs.create_job(body)
        log.info("job_created", job=name, namespace=namespace)
        return _follow_and_clean(jobs, name, options, out, interruption)
    finally:
        jobs.close()


def _create_dependencies(
    jobs: KubeJobs, others: list[dict[str, Any]], creatable: dict[str, Any]
) -> None:
    for obj in others:
        kind, name = obj.get("kind"), obj.get("metadata", {}).get("name")
        if kind not in creatable:
            log.warning(
                "manifest_object_skipped",
                kind=kind,
                name=name,
                reason=f"kube-run creates only {', '.join(creatable)}",
            )
            continue
        created = jobs.create_object(obj)
        log.info("object_created" if created else "object_exists", kind=kind, name=name)


def _follow_and_clean(
    jobs: KubeJobs,
    name: str,
    options: argparse.Namespace,
    out: BinaryIO,
    interruption: Interruption,
) -> int:
    outcome: Outcome | None = None
    try:
        outcome = follow_job(
            jobs,
            name,
            container=options.container,
            out=out,
            start_timeout=options.start_timeout,
            timeout=options.timeout,
            poll_interval=options.poll_interval,
            interruption=interruption,
        )
    finally:
        # When an API call failed, outcome is None: delete the Job only with --cleanup always.
        code = outcome.exit_code if outcome is not None else None
        if options.cleanup == "always" or (options.cleanup == "on-success" and code == 0):
            _delete(jobs, name)
        else:
            log.info("job_kept", job=name, namespace=jobs.namespace, cleanup=options.cleanup)
    _report_finished(name, jobs.namespace, outcome)
    return int(outcome.exit_code)


def _report_finished(job: str | None, namespace: str, outcome: Outcome) -> None:
    """kube-run's last line."""
    report = log.info if outcome.exit_code == 0 else log.error
    report(
        "kube_run_finished",
        job=job,
        namespace=namespace,
        exit_code=int(outcome.exit_code),
        outcome=outcome.outcome,
        pod=outcome.pod,
        runner=outcome.runner,
    )


def _delete(jobs: KubeJobs, name: str) -> None:
    try:
        jobs.delete_job(name)
    except RunnerError as exc:
        log.warning("job_cleanup_failed", job=name, reason=exc.reason)
    else:
        log.info("job_deleted", job=name, namespace=jobs.namespace)

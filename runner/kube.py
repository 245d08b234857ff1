"""Everything that talks to the Kubernetes API: Events on the owning Job, and kube-run's calls.

This is the only module that imports `kubernetes` (a quarter of a second and tens of MB), and
it is itself imported lazily: by `runner.cli` when events are wanted, by `runner.kube_cli` for
`kube-run`. A run outside a cluster never loads it.

Every call is bounded by a short (connect, read) timeout, and every API failure becomes a
`KubeApiError` whose exit code says what kind of failure it was. The event observer never lets
one escape: a missing permission or an unreachable API server is a warning, and the migration
goes on without events.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from runner.errors import ConfigError, ExitCode, RunnerError
from runner.logs import log
from runner.observers import NullObserver, RunObserver
from runner.report import RunReport
from runner.settings import Settings

#: (connect, read) seconds allowed to every API call, so an unreachable API server cannot
#: stall a migration for longer than this.
API_TIMEOUT: tuple[float, float] = (3.0, 5.0)
#: Shown as the source of the Events (`kubectl describe job` "From" column).
COMPONENT = "migration-runner"
#: The API server does not need more; `kubectl describe` shows the message on one line.
MAX_EVENT_MESSAGE = 1024
#: Where a pod's ServiceAccount namespace is mounted (used when MIGRATION_POD_NAMESPACE is unset).
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: How often a log follow checks whether to stop (a signal, or kube-run's --timeout).
LOG_POLL_S = 0.1
#: How long a stopped log follow gets to close its connection before it is left behind.
LOG_STOP_GRACE_S = 1.0


class KubeApiError(RunnerError):
    """A Kubernetes API call failed; subclasses say how, and so which exit code applies."""

    outcome = "kube_api_error"


class KubeApiUnavailable(KubeApiError):
    exit_code = ExitCode.UNAVAILABLE
    outcome = "kube_api_unavailable"


class KubeApiForbidden(KubeApiError):
    exit_code = ExitCode.PERMISSION
    outcome = "kube_api_forbidden"


class KubeApiRejected(KubeApiError):
    """The API server answered but refused the request (invalid object, not found, conflict)."""

    exit_code = ExitCode.CONFIG
    outcome = "kube_api_rejected"


_TRANSPORT_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


def _api_error(exc: BaseException, what: str) -> KubeApiError:
    if isinstance(exc, ApiException) and exc.status:
        status = int(exc.status)
        detail = _status_message(exc)
        if status in (401, 403):
            return KubeApiForbidden(
                f"{what}: forbidden (HTTP {status}): {detail}; check the ServiceAccount's RBAC",
                status=status,
            )
        if status == 429 or status >= 500:
            return KubeApiUnavailable(f"{what}: HTTP {status}: {detail}", status=status)
        return KubeApiRejected(f"{what}: HTTP {status}: {detail}", status=status)
    return KubeApiUnavailable(
        f"{what}: the Kubernetes API server is not reachable ({_first_line(exc)})"
    )


def _status_message(exc: ApiException) -> str:
    try:
        message = json.loads(exc.body or "")["message"]
    except (TypeError, ValueError, KeyError):
        message = exc.reason
    return _first_line(message or "no details")


def _first_line(value: object) -> str:
    text = str(value).strip()
    if isinstance(value, BaseException) and not text:
        return type(value).__name__
    return text.splitlines()[0] if text else ""


@contextmanager
def _calling(what: str) -> Iterator[None]:
    """Turn any failure of the API call inside into a `KubeApiError` naming `what` failed."""
    try:
        yield
    except _TRANSPORT_ERRORS as exc:
        raise _api_error(exc, what) from exc


# --- configuration --------------------------------------------------------------------------


def load_api_client(
    *,
    in_cluster: bool,
    kubeconfig: str | None = None,
    context: str | None = None,
    connect_retries: int = 0,
) -> tuple[client.ApiClient, str]:
    """An API client and the namespace to use by default.

    In a pod: the in-cluster config and the pod's own namespace. Elsewhere: the kubeconfig
    (`kubeconfig`, else `$KUBECONFIG`, else `~/.kube/config`) and its context's namespace.
    `connect_retries` bounds how often a refused connection is retried (0 for the observer).
    """
    configuration = client.Configuration()
    try:
        if in_cluster:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
            namespace = _service_account_namespace()
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
            namespace = _kubeconfig_namespace(kubeconfig, context)
    except Exception as exc:  # the loaders raise ConfigException, OSError, YAML and key errors
        where = "in-cluster config" if in_cluster else f"kubeconfig {kubeconfig or '(default)'}"
        raise ConfigError(f"cannot load the {where}: {_first_line(exc)}") from exc
    configuration.retries = urllib3.Retry(
        total=connect_retries,
        connect=connect_retries,
        read=0,
        status=0,
        redirect=0,
        backoff_factor=0.5,
    )
    return client.ApiClient(configuration), namespace


def _service_account_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return "default"


def _kubeconfig_namespace(kubeconfig: str | None, context: str | None) -> str:
    contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
        config_file=kubeconfig
    )
    chosen = active
    if context is not None:
        chosen = next((c for c in contexts if c.get("name") == context), active)
    namespace = (chosen or {}).get("context", {}).get("namespace")
    return str(namespace) if namespace else "default"


# --- Events on the owning Job ---------------------------------------------------------------


@dataclass(frozen=True)
class JobRef:
    """The Job the Events are about: `kubectl describe job` matches them by name and uid."""

    name: str
    namespace: str
    uid: str | None


def event_observer(
    settings: Settings,
    *,
    kubeconfig: str | None = None,
    timeout: tuple[float, float] = API_TIMEOUT,
) -> RunObserver | None:
    """An observer posting Events on the Job that runs this pod, or None when that is not possible.

    Uses the in-cluster config in a pod, else (MIGRATION_KUBE_EVENTS=on) the current kubeconfig.
    Finds the Job from MIGRATION_JOB_NAME, else from the ownerReferences of MIGRATION_POD_NAME.
    Never raises: a config, permission or network problem is logged as `kube_events_unavailable`.
    """
    if settings.kube_events == "off" or (
        settings.kube_events == "auto" and not settings.in_kubernetes
    ):
        return None
    try:
        api, default_namespace = load_api_client(
            in_cluster=settings.in_kubernetes, kubeconfig=kubeconfig
        )
    except RunnerError as exc:
        log.warning("kube_events_unavailable", reason=exc.reason)
        return None
    core = client.CoreV1Api(api)
    namespace = settings.pod_namespace or default_namespace
    try:
        job = _owning_job(api, namespace, settings.job_name, settings.pod_name, timeout)
    except KubeApiError as exc:
        log.warning("kube_events_unavailable", reason=exc.reason, **exc.fields)
        api.close()  # type: ignore[no-untyped-call]
        return None
    except Exception as exc:  # e.g. an answer the client cannot parse: still only a warning
        log.warning("kube_events_unavailable", reason=f"finding the Job: {_first_line(exc)}")
        api.close()  # type: ignore[no-untyped-call]
        return None
    if job is None:
        log.warning(
            "kube_events_unavailable",
            reason="cannot tell which Job runs this pod: set MIGRATION_JOB_NAME or "
            "MIGRATION_POD_NAME (Downward API)",
        )
        api.close()  # type: ignore[no-untyped-call]
        return None
    return JobEventObserver(core, job, pod_name=settings.pod_name, timeout=timeout)


def _owning_job(
    api: client.ApiClient,
    namespace: str,
    job_name: str | None,
    pod_name: str | None,
    timeout: tuple[float, float],
) -> JobRef | None:
    if job_name:
        with _calling(f"reading job/{job_name} in namespace {namespace}"):
            job = client.BatchV1Api(api).read_namespaced_job(
                job_name, namespace, _request_timeout=timeout
            )
        return JobRef(job_name, namespace, job.metadata.uid if job.metadata else None)
    if pod_name:
        with _calling(f"reading pod/{pod_name} in namespace {namespace}"):
            pod = client.CoreV1Api(api).read_namespaced_pod(
                pod_name, namespace, _request_timeout=timeout
            )
        for owner in (pod.metadata and pod.metadata.owner_references) or []:
            if owner.kind == "Job":
                return JobRef(owner.name, namespace, owner.uid)
    return None


class JobEventObserver(NullObserver):
    """Posts MigrationStarted/Waiting/Succeeded/Failed Events on a Job; best effort.

    The first failed call logs `kube_events_unavailable` and switches the observer off, so a
    denied or unreachable API costs the run at most one timeout and one warning.
    """

    def __init__(
        self,
        core: client.CoreV1Api,
        job: JobRef,
        *,
        pod_name: str | None,
        timeout: tuple[float, float] = API_TIMEOUT,
    ) -> None:
        self._core = core
        self.job = job
        self._pod_name = pod_name
        self._timeout = timeout
        self.enabled = True

    def run_started(self, command: str) -> None:
        where = f" in pod {self._pod_name}" if self._pod_name else ""
        self._post("MigrationStarted", "Normal", f"migration-runner {command} started{where}")

    def lock_waiting(self, key: str, waited_s: float) -> None:
        self._post(
            "MigrationWaiting",
            "Normal",
            f"migration lock {key} is held by another runner; waiting for it",
        )

    def run_finished(self, report: RunReport) -> None:
        if report.exit_code == 0:
            self._post("MigrationSucceeded", "Normal", succeeded_message(report))
        else:
            self._post("MigrationFailed", "Warning", failed_message(report))
        self._core.api_client.close()

    def _post(self, reason: str, event_type: str, message: str) -> None:
        if not self.enabled:
            return
        body = event_body(self.job, reason, event_type, message, pod_name=self._pod_name)
        try:
            with _calling(f"creating a {reason} event on job/{self.job.name}"):
                self._core.create_namespaced_event(
                    self.job.namespace,
                    body,  # type: ignore[arg-type]  # the client sends a dict body as it is
                    _request_timeout=self._timeout,
                )
        except KubeApiError as exc:
            self.enabled = False
            log.warning("kube_events_unavailable", reason=exc.reason, **exc.fields)
        except Exception as exc:  # best effort by contract: never reaches the migration
            self.enabled = False
            log.warning("kube_events_unavailable", reason=f"posting {reason}: {_first_line(exc)}")


def succeeded_message(report: RunReport) -> str:
    seconds = report.duration_ms / 1000
    if report.fleet is not None:
        shard = f" (shard {report.fleet.shard})" if report.fleet.shard else ""
        return _one_line(
            f"{report.fleet.targets} targets{shard} at head: applied {report.fleet.applied} "
            f"revisions in {seconds:.1f}s"
        )
    if not report.applied:
        return _one_line(
            f"nothing to apply: database at {report.to_revision or 'base'} ({seconds:.1f}s)"
        )
    revisions = ", ".join(
        f"{rev.revision} ({rev.message})" if rev.message else rev.revision for rev in report.applied
    )
    count = len(report.applied)
    return _one_line(
        f"applied {count} revision{'s' if count != 1 else ''} in {seconds:.1f}s: {revisions}; "
        f"database now at {report.to_revision or report.applied[-1].revision}"
    )


def failed_message(report: RunReport) -> str:
    at = f" at revision {report.failed_revision}" if report.failed_revision else ""
    return _one_line(
        f"exit code {report.exit_code} ({report.outcome}){at}: {report.reason or 'no reason given'}"
    )


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > MAX_EVENT_MESSAGE:
        text = text[: MAX_EVENT_MESSAGE - 3] + "..."
    return text


def event_body(
    job: JobRef,
    reason: str,
    event_type: str,
    message: str,
    *,
    pod_name: str | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A core/v1 Event about `job`, as `kubectl describe job` lists it."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    involved: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": job.name,
        "namespace": job.namespace,
    }
    if job.uid:
        involved["uid"] = job.uid
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{job.name}.{uuid.uuid4().hex[:16]}", "namespace": job.namespace},
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": event_type,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    if pod_name:
        body["reportingInstance"] = pod_name
    return body


# --- kube-run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobStatus:
    name: str
    finished: bool
    succeeded: bool
    #: The reason of the Failed condition (BackoffLimitExceeded, DeadlineExceeded, ...).
    reason: str | None = None


@dataclass(frozen=True)
class PodStatus:
    name: str
    phase: str
    #: The runner's container has run (it is running or has terminated).
    started: bool
    #: Why the container is not running yet (ContainerCreating, ImagePullBackOff, ...).
    waiting_reason: str | None = None
    exit_code: int | None = None
    termination_message: str | None = None


#: Kinds that kube-run creates next to the Job: (API group, create method).
CREATABLE_KINDS: dict[str, tuple[str, str]] = {
    "ServiceAccount": ("core", "create_namespaced_service_account"),
    "Secret": ("core", "create_namespaced_secret"),
    "ConfigMap": ("core", "create_namespaced_config_map"),
    "Role": ("rbac", "create_namespaced_role"),
    "RoleBinding": ("rbac", "create_namespaced_role_binding"),
}


class KubeJobs:
    """The few calls kube-run makes in one namespace; each is bounded and raises KubeApiError."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        *,
        timeout: tuple[float, float] = API_TIMEOUT,
    ) -> None:
        self.namespace = namespace
        self._api = api
        self._core = client.CoreV1Api(api)
        self._batch = client.BatchV1Api(api)
        self._rbac = client.RbacAuthorizationV1Api(api)
        self._timeout = timeout

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    def create_object(self, obj: dict[str, Any]) -> bool:
        """Create one object of a `CREATABLE_KINDS` kind; False when it exists already."""
        group, method = CREATABLE_KINDS[obj["kind"]]
        api = self._core if group == "core" else self._rbac
        name = obj.get("metadata", {}).get("name")
        try:
            with _calling(f"creating {obj['kind']}/{name} in namespace {self.namespace}"):
                getattr(api, method)(self.namespace, obj, _request_timeout=self._timeout)
        except KubeApiRejected as exc:
            if exc.fields.get("status") == 409:
                return False
            raise
        return True

    def create_job(self, body: dict[str, Any]) -> str:
        name = body["metadata"]["name"]
        with _calling(f"creating job/{name} in namespace {self.namespace}"):
            created = self._batch.create_namespaced_job(
                self.namespace,
                body,  # type: ignore[arg-type]  # a manifest is a dict; the client sends it as is
                _request_timeout=self._timeout,
            )
        return str(created.metadata.name if created.metadata else name)

    def job_status(self, name: str) -> JobStatus:
        with _calling(f"reading job/{name} in namespace {self.namespace}"):
            job = self._batch.read_namespaced_job(
                name, self.namespace, _request_timeout=self._timeout
            )
        for condition in (job.status and job.status.conditions) or []:
            if condition.status == "True" and condition.type in ("Complete", "Failed"):
                return JobStatus(name, True, condition.type == "Complete", condition.reason)
        return JobStatus(name, False, False)

    def job_pods(self, job_name: str, container: str | None) -> list[PodStatus]:
        """The Job's pods, oldest first; `container` (default: the first) is the runner's."""
        with _calling(f"listing the pods of job/{job_name} in namespace {self.namespace}"):
            pods = self._core.list_namespaced_pod(
                self.namespace,
                label_selector=f"job-name={job_name}",
                _request_timeout=self._timeout,
            )
        items = sorted(
            pods.items,
            key=lambda p: (
                (p.metadata and p.metadata.creation_timestamp) or datetime.min.replace(tzinfo=UTC)
            ),
        )
        return [_pod_status(pod, container) for pod in items]

    def stream_log(
        self,
        pod: str,
        container: str | None,
        out: ByteSink,
        *,
        seconds: float,
        stop: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Copy the container's log to `out` as it comes: True when the log ended, False when
        `seconds` ran out or `stop()` turned true first (the log still running, or silent).

        The stream is read in a thread of its own while this one checks `stop()` and the time
        every `LOG_POLL_S`: a read blocked on a silent stream cannot be interrupted otherwise,
        and a signal must end kube-run within moments, not at the pod's next log line."""
        follow = _LogFollow(
            lambda: self._core.read_namespaced_pod_log(
                pod,
                self.namespace,
                container=container,
                follow=True,
                _preload_content=False,
                _request_timeout=(self._timeout[0], seconds),
            ),
            out,
            what=f"reading the log of pod/{pod} in namespace {self.namespace}",
        )
        deadline = time.monotonic() + seconds
        while follow.running() and not stop() and time.monotonic() < deadline:
            follow.wait(LOG_POLL_S)
        if follow.running():
            follow.stop()
            return False
        return follow.result()

    def delete_job(self, name: str) -> None:
        with _calling(f"deleting job/{name} in namespace {self.namespace}"):
            self._batch.delete_namespaced_job(
                name,
                self.namespace,
                propagation_policy="Background",
                _request_timeout=self._timeout,
            )


class ByteSink(Protocol):
    """Where a log stream is copied to (a binary stream, or kube-run's masking relay)."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class _LogFollow:
    """One `follow=true` log request, read in a daemon thread so that the thread that started
    it can stop waiting for it at any moment (`stop`)."""

    def __init__(self, open_stream: Callable[[], Any], out: ByteSink, *, what: str) -> None:
        self._open_stream = open_stream
        self._out = out
        self._what = what
        self._lock = threading.Lock()
        self._stopped = False
        self._response: urllib3.BaseHTTPResponse | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="kube-log", daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, seconds: float) -> None:
        self._thread.join(seconds)

    def result(self) -> bool:
        """True when the log ended; the reader's error, if it failed, is raised here."""
        if self._error is not None:
            raise self._error
        return self._ended

    def stop(self) -> None:
        """Make the reader stop at once; give it a moment to close the connection."""
        with self._lock:
            self._stopped = True
            response = self._response
        if response is not None:
            _interrupt_read(response)
        self._thread.join(LOG_STOP_GRACE_S)

    def _read(self) -> None:
        try:
            with _calling(self._what):
                # With _preload_content=False the client returns the raw urllib3 response.
                response = cast(urllib3.BaseHTTPResponse, self._open_stream())
        except BaseException as exc:  # handed to the waiting thread by result()
            self._error = exc
            return
        with self._lock:
            if self._stopped:  # stopped while the request was being sent
                response.close()
                return
            self._response = response
        try:
            while chunk := response.read1(65536):
                if self._stopped:  # nothing more once the caller has moved on
                    return
                self._out.write(chunk)
                self._out.flush()
            self._ended = not self._stopped
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
            return
        except _TRANSPORT_ERRORS as exc:
            if not self._stopped:  # a stopped read fails by design
                self._error = _api_error(exc, self._what)
        except BaseException as exc:
            self._error = exc
        finally:
            if self._ended:
                response.release_conn()
            else:  # a connection left in the middle of a stream must not serve another call
                response.close()


def _interrupt_read(response: urllib3.BaseHTTPResponse) -> None:
    """End a read blocked in another thread. close() would not: a recv() blocked on a socket
    is woken by shutdown() only."""
    with contextlib.suppress(Exception):  # the reader may have finished and closed it
        shutdown = getattr(response, "shutdown", None)  # urllib3 >= 2.3
        if shutdown is not None:
            shutdown()
            return
        sock = getattr(getattr(response, "connection", None), "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RD)


def _pod_status(pod: Any, container: str | None) -> PodStatus:
    statuses = (pod.status and pod.status.container_statuses) or []
    wanted = container or (pod.spec.containers[0].name if pod.spec.containers else None)
    status = next((s for s in statuses if s.name == wanted), None)
    state = status.state if status is not None else None
    terminated = state.terminated if state is not None else None
    waiting = state.waiting if state is not None else None
    return PodStatus(
        name=pod.metadata.name,
        phase=(pod.status and pod.status.phase) or "Unknown",
        started=bool(state is not None and (state.running or terminated)),
        waiting_reason=waiting.reason if waiting is not None else None,
        exit_code=int(terminated.exit_code) if terminated is not None else None,
        termination_message=terminated.message if terminated is not None else None,
    )

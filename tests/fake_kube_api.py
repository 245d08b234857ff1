"""A FAKE Kubernetes API server for tests: plain HTTP on 127.0.0.1, no auth, JSON only.

It is not Kubernetes. It implements the few endpoints `runner.kube` calls, records every
request, and plays a scripted pod for each Job created (`FakePodScript`): Pending for a while
(or forever, with a waiting reason), then Running while it streams its canned log lines, then
terminated with an exit code and a termination message, and the Job Complete or Failed.
The real `kubernetes` client talks to it through a kubeconfig from `write_kubeconfig`.

Fault modes: `forbid(verb, resource)` / `forbid_all` answer 403 like RBAC does, `hang` holds
every request (to prove the client's timeouts), `slow(verb, resource, seconds)` holds one kind,
`reject_jobs` answers 422 quoting the Job's env (as the API server's "Invalid value" messages
quote a manifest), and `down()` stops listening. A pod whose script has many lines and a
`line_interval` streams its log for as long as a test needs (`follow=true` holds the stream).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class FakePodScript:
    """How the fake plays the pod of the next Job created."""

    log_lines: list[str] = field(default_factory=list)
    exit_code: int = 0
    #: Seconds the pod stays Pending (ContainerCreating) before its container runs.
    start_after: float = 0.0
    #: Seconds between two log lines while the container runs.
    line_interval: float = 0.0
    #: A waiting reason (e.g. ImagePullBackOff) makes the pod never start.
    never_starts: str | None = None
    termination_message: str | None = None


@dataclass
class FakeRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class _FakePod:
    namespace: str
    name: str
    job: dict[str, Any]
    script: FakePodScript
    created: float  # time.monotonic()

    @property
    def run_time(self) -> float:
        return max(len(self.script.log_lines) * self.script.line_interval, 0.01)

    def state(self) -> str:
        if self.script.never_starts:
            return "waiting"
        elapsed = time.monotonic() - self.created
        if elapsed < self.script.start_after:
            return "waiting"
        if elapsed < self.script.start_after + self.run_time:
            return "running"
        return "terminated"


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(pattern), handler)
    for method, pattern, handler in [
        ("POST", r"^/api/v1/namespaces/(?P<ns>[^/]+)/events$", "_create_event"),
        ("GET", r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$", "_list_pods"),
        ("GET", r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)$", "_read_pod"),
        ("GET", r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$", "_pod_log"),
        ("POST", r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs$", "_create_job"),
        ("GET", r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs/(?P<name>[^/]+)$", "_read_job"),
        (
            "DELETE",
            r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs/(?P<name>[^/]+)$",
            "_delete_job",
        ),
        (
            "POST",
            r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<res>serviceaccounts|secrets|configmaps)$",
            "_create_other",
        ),
        (
            "POST",
            r"^/apis/rbac\.authorization\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/"
            r"(?P<res>roles|rolebindings)$",
            "_create_other",
        ),
    ]
]
_VERBS = {"GET": "get", "POST": "create", "DELETE": "delete"}


class FakeKubeApi:
    """The fake API server; use it as a context manager (`with FakeKubeApi() as api:`)."""

    def __init__(self) -> None:
        self.requests: list[FakeRequest] = []
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], _FakePod] = {}
        self.static_pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.next_pod = FakePodScript()
        self.forbidden: set[tuple[str, str]] = set()
        self.forbid_all = False
        self.hang = False
        self.delays: dict[tuple[str, str], float] = {}
        self.reject_jobs = False
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._running = False

    # --- lifecycle and setup ---------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeKubeApi:
        self._thread.start()
        self._running = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def down(self) -> None:
        """Stop answering: later connections to the port are refused."""
        self._release.set()
        if self._running:
            self._running = False
            self._server.shutdown()
        self._server.server_close()

    def write_kubeconfig(self, path: Path, *, namespace: str = "default") -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                        }
                    ],
                    "current-context": "fake",
                }
            ),
            encoding="utf-8",
        )
        return path

    def forbid(self, verb: str, resource: str) -> None:
        """Answer 403 to `verb` (get, create, delete, list) on `resource` (events, pods, ...)."""
        self.forbidden.add((verb, resource))

    def slow(self, verb: str, resource: str, seconds: float) -> None:
        """Answer `verb` on `resource` (as in `forbid`) only after `seconds`."""
        self.delays[(verb, resource)] = seconds

    def add_job(self, namespace: str, name: str, uid: str | None = None) -> dict[str, Any]:
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4())},
            "spec": {"template": {"spec": {"containers": [{"name": "migrate", "image": "x"}]}}},
            "status": {},
        }
        self.jobs[(namespace, name)] = job
        return job

    def add_pod(self, namespace: str, name: str, *, job: dict[str, Any]) -> None:
        """A pod owned by `job` (as from add_job), for the ownerReferences lookup."""
        self.static_pods[(namespace, name)] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "controller": True,
                        "name": job["metadata"]["name"],
                        "uid": job["metadata"]["uid"],
                    }
                ],
            },
            "spec": {"containers": [{"name": "migrate", "image": "x"}]},
            "status": {"phase": "Running"},
        }

    # --- what tests assert on --------------------------------------------------------------

    def requests_for(self, method: str, pattern: str) -> list[FakeRequest]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests_for("POST", r"/events$")]

    def created_jobs(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests_for("POST", r"/jobs$")]

    # --- the endpoints ---------------------------------------------------------------------

    def _create_event(self, ns: str, body: Any, query: dict[str, list[str]]) -> _Reply:
        return _Reply(201, {**body, "metadata": {**body.get("metadata", {}), "namespace": ns}})

    def _create_job(self, ns: str, body: Any, query: dict[str, list[str]]) -> _Reply:
        name = body["metadata"]["name"]
        if self.reject_jobs:
            env = body["spec"]["template"]["spec"]["containers"][0].get("env", [])
            return _status(
                422,
                "Invalid",
                f'Job.batch "{name}" is invalid: spec.template.spec.containers[0].env: '
                f"Invalid value: {json.dumps(env)}: rejected by the fake API server",
            )
        if (ns, name) in self.jobs:
            return _status(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
        job = json.loads(json.dumps(body))
        job["metadata"].update(uid=str(uuid.uuid4()), namespace=ns, creationTimestamp=_now())
        job["status"] = {}
        self.jobs[(ns, name)] = job
        pod_name = f"{name}-{uuid.uuid4().hex[:5]}"
        self.pods[(ns, pod_name)] = _FakePod(ns, pod_name, job, self.next_pod, time.monotonic())
        return _Reply(201, self._job_view(job))

    def _read_job(self, ns: str, name: str, query: dict[str, list[str]]) -> _Reply:
        job = self.jobs.get((ns, name))
        if job is None:
            return _status(404, "NotFound", f'jobs.batch "{name}" not found')
        return _Reply(200, self._job_view(job))

    def _delete_job(self, ns: str, name: str, body: Any, query: dict[str, list[str]]) -> _Reply:
        if self.jobs.pop((ns, name), None) is None:
            return _status(404, "NotFound", f'jobs.batch "{name}" not found')
        for key in [k for k, pod in self.pods.items() if pod.job["metadata"]["name"] == name]:
            del self.pods[key]
        return _status(200, "", "", status="Success")

    def _job_view(self, job: dict[str, Any]) -> dict[str, Any]:
        view: dict[str, Any] = json.loads(json.dumps(job))
        pods = [p for p in self.pods.values() if p.job is job]
        if pods and pods[-1].state() == "terminated":
            ok = pods[-1].script.exit_code == 0
            view["status"] = {
                "succeeded" if ok else "failed": 1,
                "conditions": [
                    {
                        "type": "Complete" if ok else "Failed",
                        "status": "True",
                        "reason": None if ok else "BackoffLimitExceeded",
                    }
                ],
            }
        return view

    def _list_pods(self, ns: str, query: dict[str, list[str]]) -> _Reply:
        selector = query.get("labelSelector", [""])[0]
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        items = [
            view
            for view in (self._pod_view(p) for p in self.pods.values() if p.namespace == ns)
            if all(view["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]
        return _Reply(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})

    def _read_pod(self, ns: str, name: str, query: dict[str, list[str]]) -> _Reply:
        if (ns, name) in self.static_pods:
            return _Reply(200, self.static_pods[(ns, name)])
        pod = self.pods.get((ns, name))
        if pod is None:
            return _status(404, "NotFound", f'pods "{name}" not found')
        return _Reply(200, self._pod_view(pod))

    def _pod_view(self, pod: _FakePod) -> dict[str, Any]:
        job = pod.job
        template = job["spec"]["template"]
        container = template["spec"]["containers"][0]
        state = pod.state()
        if state == "waiting":
            phase = "Pending"
            container_state: dict[str, Any] = {
                "waiting": {"reason": pod.script.never_starts or "ContainerCreating"}
            }
        elif state == "running":
            phase = "Running"
            container_state = {"running": {"startedAt": _now()}}
        else:
            phase = "Succeeded" if pod.script.exit_code == 0 else "Failed"
            terminated: dict[str, Any] = {
                "exitCode": pod.script.exit_code,
                "reason": "Completed" if pod.script.exit_code == 0 else "Error",
            }
            if pod.script.termination_message is not None:
                terminated["message"] = pod.script.termination_message
            container_state = {"terminated": terminated}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "uid": pod.name,
                "creationTimestamp": _now(),
                "labels": {
                    "job-name": job["metadata"]["name"],
                    "controller-uid": job["metadata"]["uid"],
                },
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "controller": True,
                        "name": job["metadata"]["name"],
                        "uid": job["metadata"]["uid"],
                    }
                ],
            },
            "spec": template["spec"],
            "status": {
                "phase": phase,
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container.get("image", ""),
                        "imageID": "",
                        "ready": state == "running",
                        "restartCount": 0,
                        "state": container_state,
                    }
                ],
            },
        }

    def _pod_log(self, ns: str, name: str, query: dict[str, list[str]]) -> _Reply:
        pod = self.pods.get((ns, name))
        if pod is None:
            return _status(404, "NotFound", f'pods "{name}" not found')
        if pod.state() == "waiting":
            return _status(400, "BadRequest", f'container in pod "{name}" is waiting to start')
        return _Reply(200, _LogStream(pod, follow=query.get("follow") == ["true"]))

    def _create_other(self, ns: str, res: str, body: Any, query: dict[str, list[str]]) -> _Reply:
        key = (ns, res, body["metadata"]["name"])
        if key in self.objects:
            return _status(409, "AlreadyExists", f'{res} "{key[2]}" already exists')
        self.objects[key] = body
        return _Reply(201, body)


@dataclass
class _LogStream:
    pod: _FakePod
    follow: bool

    def chunks(self) -> Iterator[bytes]:
        """Each line when it is due (follow), then the end when the container exits."""
        script = self.pod.script
        begin = self.pod.created + script.start_after
        for index, line in enumerate(script.log_lines):
            due = begin + index * script.line_interval
            if not self.follow and due > time.monotonic():
                return
            time.sleep(max(due - time.monotonic(), 0))
            yield (line + "\n").encode()
        if self.follow:
            time.sleep(max(begin + self.pod.run_time - time.monotonic(), 0))


@dataclass
class _Reply:
    status: int
    body: dict[str, Any] | _LogStream


def _status(code: int, reason: str, message: str, status: str = "Failure") -> _Reply:
    return _Reply(
        code,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": status,
            "reason": reason,
            "message": message,
            "code": code,
        },
    )


def _rbac_terms(method: str, path: str) -> tuple[str, str]:
    """("pods/log", "get") for GET .../namespaces/NS/pods/NAME/log, as RBAC rules name them."""
    segments = path.split("/")
    at = segments.index("namespaces") + 2
    resource = "/".join(segments[at::2])
    verb = "list" if method == "GET" and len(segments) == at + 1 else _VERBS[method]
    return resource, verb


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _handler_for(api: FakeKubeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return None

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_DELETE(self) -> None:
            self._handle()

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            with api._lock:
                api.requests.append(FakeRequest(self.command, parts.path, query, body))
            if api.hang:
                api._release.wait(30)
            reply = self._route(parts.path, query, body)
            if isinstance(reply.body, _LogStream):
                self._stream(reply.body)
            else:
                self._send_json(reply.status, reply.body)

        def _route(self, path: str, query: dict[str, list[str]], body: Any) -> _Reply:
            for method, pattern, handler in _ROUTES:
                match = pattern.match(path)
                if method != self.command or match is None:
                    continue
                resource, verb = _rbac_terms(method, path)
                if api.forbid_all or (verb, resource) in api.forbidden:
                    return _status(
                        403,
                        "Forbidden",
                        f'{resource} is forbidden: User "system:serviceaccount:fake:runner" '
                        f'cannot {verb} resource "{resource}" (fake API server)',
                    )
                time.sleep(api.delays.get((verb, resource), 0))
                args = dict(match.groupdict())
                with api._lock:
                    if method in ("POST", "DELETE"):
                        return getattr(api, handler)(*args.values(), body, query)  # type: ignore[no-any-return]
                    return getattr(api, handler)(*args.values(), query)  # type: ignore[no-any-return]
            return _status(404, "NotFound", f"the fake API server does not serve {path}")

        def _send_json(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeouts)
                return

        def _stream(self, stream: _LogStream) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for chunk in stream.chunks():
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return

    return Handler

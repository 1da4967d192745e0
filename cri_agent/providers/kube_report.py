"""What the Kubernetes API watches tell the agent about themselves: typed, not sentences.

Kept apart from ``kubernetes.py`` so that the wiring can read a report
without importing the Kubernetes client.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ApiStatus(StrEnum):
    OK = "ok"  # every watch works
    FORBIDDEN = "forbidden"  # RBAC denies a permission: discovery goes on from the runtime
    FAILED = "failed"  # a watch or lookup fails for another reason (retried with backoff)
    NO_CREDENTIALS = "no-credentials"  # no ServiceAccount token in the pod: discovery goes on from the runtime


@dataclass(frozen=True, slots=True)
class KubeReport:
    status: ApiStatus
    reason: str  # the sentence for the condition and the event, rendered once, here
    watch: str = ""  # "pods", "node", "owners"
    permission: str = ""  # what RBAC denies, e.g. "get replicasets" (FORBIDDEN only)

"""Which pods may register: namespace and label filters, opt-in and opt-out.

Truth table (first matching row wins; docs/configuration.md has it too):

| # | condition                                                  | result   |
|---|------------------------------------------------------------|----------|
| 1 | annotation ``coral.io/enabled`` is false                   | excluded (opt-out, always wins) |
| 2 | namespace in ``excludeNamespaces``                         | excluded |
| 3 | ``includeNamespaces`` set and namespace not in it          | excluded |
| 4 | any ``excludeLabels`` pair present on the pod              | excluded |
| 5 | ``includeLabels`` set, not all present, no opt-in          | excluded |
| 6 | otherwise (``coral.io/enabled: "true"`` satisfies row 5)   | included |

A malformed ``coral.io/enabled`` value is an error and counts as unset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cri_agent.discovery.rules import FilterRules
from cri_agent.model import PodProblem, PodRecord

ENABLED = "coral.io/enabled"
_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off"})

INCLUDED = "included"


@dataclass(frozen=True, slots=True)
class FilterDecision:
    included: bool
    reason: str  # stable, human-readable; compared across passes
    opt_out: bool = False
    errors: tuple[PodProblem, ...] = ()


def pod_ref(pod: PodRecord) -> str:
    return f"{pod.namespace}/{pod.name}"


def parse_bool(value: str) -> bool | None:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return None


def _pairs(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def evaluate(pod: PodRecord, rules: FilterRules) -> FilterDecision:
    errors: tuple[PodProblem, ...] = ()
    enabled: bool | None = None
    if ENABLED in pod.annotations:
        raw = pod.annotations[ENABLED]
        enabled = parse_bool(raw)
        if enabled is None:
            errors = (PodProblem(ENABLED, f'"{raw}" is not true or false; ignored'),)

    def excluded(reason: str, *, opt_out: bool = False) -> FilterDecision:
        return FilterDecision(included=False, reason=reason, opt_out=opt_out, errors=errors)

    if enabled is False:
        return excluded(f"opt-out: {ENABLED}=false", opt_out=True)
    if pod.namespace in rules.exclude_namespaces:
        return excluded(f"namespace {pod.namespace} is excluded")
    if rules.include_namespaces and pod.namespace not in rules.include_namespaces:
        return excluded(f"namespace {pod.namespace} is not included")
    hits = {k: v for k, v in rules.exclude_labels.items() if pod.labels.get(k) == v}
    if hits:
        return excluded(f"label {_pairs(hits)} is excluded")
    missing = {k: v for k, v in rules.include_labels.items() if pod.labels.get(k) != v}
    if missing and enabled is not True:
        return excluded(f"labels {_pairs(missing)} required")
    return FilterDecision(included=True, reason=INCLUDED, errors=errors)

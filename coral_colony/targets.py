"""What an operation's target names: one pod, or every pod of a service name or a workload.

A target is a service key (``namespace/pod-uid/container/port``), a
``namespace/pod``, a service name, or a workload as kubectl writes it
(``deploy/NAME``, ``sts/NAME``, ``ds/NAME``, ``job/NAME``, ``cj/NAME``). A
pod is a pod of one node's agent: the same ``namespace/pod`` reported by two
agents is two candidates (one of them lying), never the first row found.

One pod is the rule: a target matching several is refused, naming them,
unless the operator asked for every pod (``all_pods``) or named a
workload; then each pod is one part of the operation, on its own node's
agent, up to ``MAX_PODS``.

A workload's pods are those whose agent reported that owner (it learns it
from the Kubernetes API), and, where the agent had no API (restricted
RBAC), those whose name and labels show it: ``NAME-<pod-template-hash>-xxxxx``
with that ``pod-template-hash`` label for a Deployment, ``NAME-<ordinal>``
with the ``statefulset.kubernetes.io/pod-name`` label for a StatefulSet,
``NAME-xxxxx`` with ``controller-revision-hash`` and ``pod-template-generation``
labels for a DaemonSet.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from coral_base.vocabulary import WorkloadKind, workload_of
from coral_colony.model import (
    Action,
    AgentKind,
    OperationRequest,
    OperationTarget,
    Provenance,
    ServiceFilter,
    StoredService,
)
from coral_colony.stores.reader import RegistryReader

MAX_PODS = 16  # pods of one operation at most (as of one operator's running operations together)

_SUFFIX = "[bcdfghjklmnpqrstvwxz2456789]{5}"  # the apiserver's generateName alphabet


class TooManyPods(ValueError):
    """The target matches more pods than one operation takes."""


@dataclass(frozen=True, slots=True)
class Resolved:
    """One pod an operation runs on: the target as the operator sees it (node included) and its agent."""

    target: OperationTarget
    agent_id: str

    @property
    def node(self) -> str:
        return self.target.node_name


def resolve(reader: RegistryReader, asked: OperationRequest) -> list[Resolved]:
    """The pods ``asked`` runs on, in a stable order; LookupError or TooManyPods with what to do instead."""
    workload = workload_of(asked.target)
    if workload is not None:
        found = _workload_services(reader, *workload, namespace=asked.namespace, node=asked.node)
        if found:
            namespaces = sorted({s.service.namespace for s in found})
            if len(namespaces) > 1:
                raise LookupError(
                    f"{asked.target!r} is in namespaces {', '.join(namespaces)}: name one with --namespace"
                )
            return _one_unless_tap(asked, _every_pod(reader, found, asked.target, by_service=False))
        # nothing by that owner: a namespace that happens to be called "deploy" is still a namespace
    found, by_service = _candidates(reader, asked.target, node=asked.node, namespace=asked.namespace)
    if asked.all_pods and found:
        return _one_unless_tap(asked, _every_pod(reader, found, asked.target, by_service=by_service))
    return [resolve_pod(reader, asked.target, node=asked.node, namespace=asked.namespace, action=asked.action)]


def _one_unless_tap(asked: OperationRequest, pods: list[Resolved]) -> list[Resolved]:
    """A capture takes every pod (a file, an interface each); a profile or a flow table is of one pod."""
    if len(pods) > 1 and asked.action is not Action.TAP:
        raise LookupError(
            f"{asked.target!r} matches {len(pods)} pods and {asked.action} runs on one:"
            " name it as namespace/pod (tap takes them all)"
        )
    return pods


def resolve_pod(
    reader: RegistryReader, target: str, *, node: str = "", namespace: str = "", action: Action = Action.TAP
) -> Resolved:
    """A service key, ``namespace/pod`` or a service name -> the one pod it names.

    With ``node``, a ``namespace/pod`` the registry does not list (its namespace
    may be filtered out) goes to that node's agent, which decides.
    """
    found, by_service = _candidates(reader, target, node=node, namespace=namespace)
    if not found and node and target.count("/") == 1:
        agents = [a for a in reader.agents(node=node) if a.agent.kind is AgentKind.NODE_AGENT]
        if not agents:
            raise LookupError(f"no node agent on node {node!r} (coral agents lists them)")
        namespace, pod = target.split("/")
        return Resolved(OperationTarget(namespace=namespace, pod_name=pod, node_name=node), agents[0].agent.agent_id)
    if not found:
        raise LookupError(f"no service or pod {target!r} in the colony (coral services lists them)")
    pods = _by_pod(found)
    if len(pods) > 1:
        choices = ", ".join(f"{ns}/{pod} on node {node} (agent {agent})" for ns, pod, node, agent in list(pods)[:10])
        more = f" and {len(pods) - 10} more" if len(pods) > 10 else ""
        same_pod = len({p[:2] for p in pods}) < len(pods)
        hint = "name one as namespace/pod" + (" and pick the node with --node" if same_pod else "")
        hint += ", or take them all with --all-pods" if action is Action.TAP else ""
        raise LookupError(f"{target!r} matches {len(pods)} pods: {choices}{more}; {hint}")
    [(chosen, *_)] = pods.values()
    if chosen.stale:
        raise LookupError(f"{target!r} is stale: the agent of node {chosen.service.node_name} is unreachable")
    return _resolved(_agent_nodes(reader), found, by_service=by_service)


def _candidates(
    reader: RegistryReader, target: str, *, node: str, namespace: str = ""
) -> tuple[list[StoredService], bool]:
    """The services ``target`` names (and whether it named services rather than a pod)."""
    found = reader.services(ServiceFilter(key=target)) if target.count("/") >= 2 else []
    by_service = True
    if not found and target.count("/") == 1:
        namespace, pod = target.split("/")
        found = reader.services(ServiceFilter(namespace=namespace, pod_name=pod))
        by_service = False
    if not found and "/" not in target:
        found = reader.services(ServiceFilter(name_exact=target))
    if node:  # the operator picked the node: candidates elsewhere are not it
        found = [s for s in found if s.service.node_name == node]
    if namespace:
        found = [s for s in found if s.service.namespace == namespace]
    return found, by_service


def _by_pod(found: list[StoredService]) -> dict[tuple[str, str, str, str], list[StoredService]]:
    """The services by (namespace, pod, node, agent), in that order."""
    pods: dict[tuple[str, str, str, str], list[StoredService]] = {}
    for s in found:
        pods.setdefault((s.service.namespace, s.service.pod_name, s.service.node_name, s.agent_id), []).append(s)
    return dict(sorted(pods.items()))


def _every_pod(reader: RegistryReader, found: list[StoredService], target: str, *, by_service: bool) -> list[Resolved]:
    pods = _by_pod([s for s in found if not s.stale])
    if not pods:
        raise LookupError(f"{target!r} is stale: the agents of its pods are unreachable")
    if len(pods) > MAX_PODS:
        raise TooManyPods(
            f"{target!r} matches {len(pods)} pods, more than the {MAX_PODS} one operation takes:"
            " narrow it with --node or --namespace"
        )
    nodes = _agent_nodes(reader)
    return [_resolved(nodes, services, by_service=by_service) for services in pods.values()]


def _agent_nodes(reader: RegistryReader) -> dict[str, str]:
    """Each agent's node, as it registered (a service's own node_name is the agent's word about the pod)."""
    return {a.agent.agent_id: a.agent.node_name for a in reader.agents()}


def _resolved(nodes: Mapping[str, str], services: list[StoredService], *, by_service: bool) -> Resolved:
    """The pod of ``services`` (all of one pod and agent); a service of its own when there is just one."""
    chosen = services[0]
    service = chosen.service
    one = by_service and len(services) == 1
    return Resolved(
        OperationTarget(
            namespace=service.namespace,
            pod_name=service.pod_name,
            pod_uid=service.pod_uid,
            service_key=service.key if one else "",
            service_name=service.component_name if by_service else "",
            provenance=service.provenance if by_service else Provenance.UNKNOWN,
            node_name=nodes.get(chosen.agent_id) or service.node_name,
        ),
        chosen.agent_id,
    )


def _workload_services(
    reader: RegistryReader, kind: WorkloadKind, name: str, *, namespace: str, node: str
) -> list[StoredService]:
    """The services of the pods of workload ``kind/name``: as the API told the agents, or as names show it."""
    owned = reader.services(ServiceFilter(workload=f"{kind}/{name}", namespace=namespace, node=node))
    unowned = reader.services(ServiceFilter(workload="", namespace=namespace, node=node, pod_prefix=f"{name}-"))
    shown = _SHOWN_BY.get(kind)
    return owned + [s for s in unowned if not s.service.workload and shown and shown(name, s)]


def _deployment_pod(name: str, stored: StoredService) -> bool:
    template = stored.service.labels.get("pod-template-hash", "")
    return (
        bool(template)
        and re.fullmatch(f"{re.escape(name)}-{re.escape(template)}-{_SUFFIX}", stored.service.pod_name) is not None
    )


def _statefulset_pod(name: str, stored: StoredService) -> bool:
    pod = stored.service.pod_name
    return (
        stored.service.labels.get("statefulset.kubernetes.io/pod-name") == pod
        and re.fullmatch(f"{re.escape(name)}-[0-9]+", pod) is not None
    )


def _daemonset_pod(name: str, stored: StoredService) -> bool:
    return (
        "controller-revision-hash" in stored.service.labels
        and "pod-template-generation" in stored.service.labels
        and (re.fullmatch(f"{re.escape(name)}-{_SUFFIX}", stored.service.pod_name) is not None)
    )


_SHOWN_BY: Mapping[WorkloadKind, Callable[[str, StoredService], bool]] = {
    WorkloadKind.DEPLOYMENT: _deployment_pod,
    WorkloadKind.STATEFUL_SET: _statefulset_pod,
    WorkloadKind.DAEMON_SET: _daemonset_pod,
}

"""The Kubernetes API: enrichment when RBAC allows it, and the fallback pod source.

Everything is kept current by two watches, never by polling per pod: this
node's pods (``fieldSelector=spec.nodeName=<node>``) and this node object
(labels). Each watch lists once, then watches from the list's
resourceVersion, resumes from the last one it saw, relists on 410 Gone and
backs off with jitter on errors.

A pod's owner is followed up to its Deployment or CronJob with one ``get``
of its ReplicaSet or Job, the first time a pod of this node names it; the
answer is kept while pods of this node still name it. There is no
cluster-wide informer: a node agent that watched every ReplicaSet of a
5,000-node cluster would hold them all in memory, on every node, and load
the API server with as many watches as there are nodes.

403 Forbidden is a configuration fact, not an outage: it is reported once,
naming the verb and resource the agent's identity lacks, the agent goes on
without that watch (CRI-only discovery stays complete), and retries after a
long backoff (``discovery.kubernetes.forbiddenRetryInterval``).

The watches run in threads (the official client is synchronous) and post
what they learn to the agent's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from coral_base.backoff import Backoff
from coral_base.errors import ConfigError
from coral_base.logs import emit
from cri_agent.model import (
    ContainerID,
    ContainerRecord,
    ContainerState,
    DeclaredPort,
    PodRecord,
    PodUID,
    SandboxID,
)
from cri_agent.providers.kube_report import ApiStatus, KubeReport

log = logging.getLogger("cri_agent.providers.kubernetes")

WATCH_TIMEOUT_S = 240  # server-side watch timeout; the watch resumes from its resourceVersion
RESTART_GRACE_S = 60.0  # a watch that worked this recently treats 403 as an API server still starting
OWNER_TIMEOUT_S = 10.0
Problem = Callable[[KubeReport], None]  # from a watch thread: the agent's `kubernetes` condition
OwnerKey = tuple[str, str, str]  # (kind, namespace, name) of a ReplicaSet or Job
PARENTS = {"ReplicaSet": "Deployment", "Job": "CronJob"}  # owners looked up, and the kind of their own owner


@dataclass(slots=True)
class _State:
    pods: dict[str, Any] = field(default_factory=dict)  # uid -> V1Pod of this node
    owners: dict[OwnerKey, str] = field(default_factory=dict)  # ReplicaSet/Job -> "Deployment/x", "CronJob/x" or ""
    wanted: dict[OwnerKey, float] = field(default_factory=dict)  # owners to look up -> when (monotonic)
    node_labels: dict[str, str] = field(default_factory=dict)
    synced: set[str] = field(default_factory=set)  # watches that completed their first list


def load_api(kubeconfig: Path | None) -> client.ApiClient:
    """In-cluster credentials (the ServiceAccount) unless a kubeconfig is given."""
    configuration = client.Configuration()
    try:
        if kubeconfig is not None:
            config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
    except (config.ConfigException, OSError) as exc:
        where = kubeconfig or "the in-cluster ServiceAccount"
        raise ConfigError(f"Kubernetes API credentials from {where} cannot be loaded: {exc}") from None
    return client.ApiClient(configuration)


class KubeSource:
    def __init__(
        self,
        api: client.ApiClient,
        *,
        node_name: str,
        forbidden_retry_s: float = 300.0,
        on_change: Callable[[], None] = lambda: None,
        on_problem: Problem = lambda report: None,
    ) -> None:
        self.api = api
        self.node_name = node_name
        self.forbidden_retry_s = forbidden_retry_s
        self.on_change = on_change
        self.on_problem = on_problem
        self._state = _State()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # an owner to look up
        self._stop = threading.Event()
        self._forbidden: dict[str, str] = {}  # watch or owner kind -> the permission it lacks
        self._failed: set[str] = set()  # watches (and owner lookups) that failed at least once
        self.events_received = 0

    # -- what the agent reads ------------------------------------------------------------------

    @property
    def pods_synced(self) -> bool:
        return "pods" in self._state.synced

    @property
    def settled(self) -> bool:
        """What the API knows is in: the pods watch listed (or failed to) and no owner lookup is due now."""
        with self._lock:
            if "pods" not in self._state.synced:
                return "pods" in self._failed
            now = time.monotonic()
            return all(when > now for when in self._state.wanted.values())

    def node_labels(self) -> dict[str, str]:
        with self._lock:
            return dict(self._state.node_labels)

    def owner(self, pod: Any) -> str:
        """``Deployment/x``, ``StatefulSet/x``, ``CronJob/x``...: the pod's controlling workload."""
        key = _controller(pod)
        if key is None:
            return ""
        kind, _, name = key
        with self._lock:
            return self._state.owners.get(key) or f"{kind}/{name}"

    def enrich(self, pods: list[PodRecord]) -> list[PodRecord]:
        """CRI pods with their owning workload, where the API knows the pod."""
        with self._lock:
            known = dict(self._state.pods)
        return [replace(p, owner=self.owner(known[p.uid])) if p.uid in known else p for p in pods]

    def pod_records(self) -> list[PodRecord]:
        """The fallback source: running pods of this node as the API sees them (no netns, no pids)."""
        with self._lock:
            pods = list(self._state.pods.values())
        return [record for pod in pods if (record := self._record(pod)) is not None]

    # -- the watches ---------------------------------------------------------------------------

    async def run(self) -> None:
        core = client.CoreV1Api(self.api)
        loop = asyncio.get_running_loop()
        on_node = {"field_selector": f"spec.nodeName={self.node_name}"}
        this_node = {"field_selector": f"metadata.name={self.node_name}"}
        watches: list[tuple[str, str, Callable[..., Any], dict[str, str], Callable[[str, Any], None]]] = [
            ("pods", "list/watch pods (on this node)", core.list_pod_for_all_namespaces, on_node, self._on_pod),
            ("nodes", f"get/watch node {self.node_name}", core.list_node, this_node, self._on_node),
        ]
        threads = [
            threading.Thread(
                target=self._watch,
                args=(name, need, lister, kwargs, handler, loop),
                name=f"kube-watch-{name}",
                daemon=True,
            )
            for name, need, lister, kwargs, handler in watches
        ]
        threads.append(threading.Thread(target=self._look_up_owners, args=(loop,), name="kube-owners", daemon=True))
        for thread in threads:
            thread.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()
            with self._wake:
                self._wake.notify_all()
            with contextlib.suppress(Exception):
                self.api.close()

    def _watch(
        self,
        name: str,
        need: str,
        lister: Callable[..., Any],
        kwargs: Mapping[str, Any],
        handle: Callable[[str, Any], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        backoff = Backoff(initial=0.5, maximum=30.0)
        version: str | None = None
        since = time.monotonic()  # the last time this watch was known to work
        while not self._stop.is_set():
            try:
                if version is None:
                    listed = lister(**kwargs, _request_timeout=30)
                    with self._lock:
                        self._reset(name)
                    for item in listed.items:
                        handle("ADDED", item)
                    version = listed.metadata.resource_version
                    self._state.synced.add(name)
                    since = time.monotonic()
                    self._ok(name, loop)
                    loop.call_soon_threadsafe(self.on_change)
                stream = watch.Watch().stream(
                    lister,
                    **kwargs,
                    resource_version=version,
                    timeout_seconds=WATCH_TIMEOUT_S,
                    allow_watch_bookmarks=True,
                    _request_timeout=WATCH_TIMEOUT_S + 30,
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":  # 410 Gone arrives as an event: relist
                        version = None
                        break
                    version = obj.metadata.resource_version
                    since = time.monotonic()
                    if kind != "BOOKMARK":
                        self.events_received += 1
                        handle(kind, obj)
                        loop.call_soon_threadsafe(self.on_change)
                backoff.reset()
                since = time.monotonic()
            except ApiException as exc:
                if exc.status == 410:
                    version = None
                elif exc.status == 403 and name in self._state.synced and time.monotonic() - since < RESTART_GRACE_S:
                    # Allowed before: an API server that just restarted denies until its RBAC cache syncs.
                    self._fail(name, f"403 right after being allowed: retrying ({_message(exc)})", loop)
                    version = None
                    self._stop.wait(backoff.next())
                elif exc.status == 403:
                    self._forbidden_once(name, need, exc, loop)
                    version = None
                    self._stop.wait(self.forbidden_retry_s)
                else:
                    self._fail(name, f"{exc.status} {exc.reason}", loop)
                    self._stop.wait(backoff.next())
            except Exception as exc:  # connection refused, timeouts, an API server restarting
                if self._stop.is_set():
                    return
                self._fail(name, f"{type(exc).__name__}: {exc}", loop)
                self._stop.wait(backoff.next())

    # -- handlers (watch threads) --------------------------------------------------------------

    def _reset(self, name: str) -> None:
        if name == "pods":
            self._state.pods.clear()

    def _on_pod(self, kind: str, pod: Any) -> None:
        with self._lock:
            if kind == "DELETED":
                self._state.pods.pop(pod.metadata.uid, None)
                named = {key for p in self._state.pods.values() if (key := _controller(p)) is not None}
                for key in set(self._state.owners) - named:
                    del self._state.owners[key]
                return
            self._state.pods[pod.metadata.uid] = pod
            key = _controller(pod)
            owners, wanted = self._state.owners, self._state.wanted
            if key is not None and key[0] in PARENTS and key not in owners and key not in wanted:
                self._state.wanted[key] = time.monotonic()
                self._wake.notify()

    def _on_node(self, kind: str, node: Any) -> None:
        with self._lock:
            self._state.node_labels = {} if kind == "DELETED" else dict(node.metadata.labels or {})

    # -- owners (their own thread) ---------------------------------------------------------------

    def _look_up_owners(self, loop: asyncio.AbstractEventLoop) -> None:
        apps, batch = client.AppsV1Api(self.api), client.BatchV1Api(self.api)
        readers: dict[str, Callable[..., Any]] = {
            "ReplicaSet": apps.read_namespaced_replica_set,
            "Job": batch.read_namespaced_job,
        }
        backoff = Backoff(initial=0.5, maximum=30.0)
        while not self._stop.is_set():
            with self._wake:
                now = time.monotonic()
                due = [key for key, when in self._state.wanted.items() if when <= now]
                if not due:
                    next_at = min(self._state.wanted.values(), default=now + 1.0)
                    self._wake.wait(timeout=min(max(next_at - now, 0.0), 1.0))
                    continue
            for key in due:  # they stay wanted while looked up: `settled` waits for them
                if self._stop.is_set():
                    return
                retry = self._look_up(key, readers[key[0]], backoff, loop)
                with self._lock:
                    if retry is None:
                        del self._state.wanted[key]
                    else:
                        self._state.wanted[key] = time.monotonic() + retry

    def _look_up(
        self, key: OwnerKey, read: Callable[..., Any], backoff: Backoff, loop: asyncio.AbstractEventLoop
    ) -> float | None:
        """One get; the delay before the next try, None when the answer is in."""
        kind, namespace, name = key
        try:
            obj = read(name, namespace, _request_timeout=OWNER_TIMEOUT_S)
        except ApiException as exc:
            if exc.status != 404:  # 404: gone, its pods keep the ReplicaSet or Job as their owner
                return self._retry_owner(key, exc, backoff, loop)
            obj = None
        except Exception as exc:  # connection refused, timeouts, an API server restarting
            return self._retry_owner(key, exc, backoff, loop)
        parent = PARENTS[kind]
        refs = [r for r in (obj.metadata.owner_references or []) if r.controller and r.kind == parent] if obj else []
        with self._lock:
            self._state.owners[key] = f"{parent}/{refs[0].name}" if refs else ""
        if backoff.failing or kind in self._forbidden:
            self._ok(kind, loop)
        backoff.reset()
        loop.call_soon_threadsafe(self.on_change)
        return None

    def _retry_owner(self, key: OwnerKey, exc: Exception, backoff: Backoff, loop: asyncio.AbstractEventLoop) -> float:
        kind, namespace, name = key
        if isinstance(exc, ApiException) and exc.status == 403:
            self._forbidden_once(kind, f"get {kind.lower()}s", exc, loop)
            return self.forbidden_retry_s
        detail = f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else f"{type(exc).__name__}: {exc}"
        self._fail("owners", f"get {kind} {namespace}/{name}: {detail}", loop)
        return backoff.next()

    # -- reporting -------------------------------------------------------------------------------

    def _forbidden_once(self, name: str, need: str, exc: ApiException, loop: asyncio.AbstractEventLoop) -> None:
        reason = (
            f"Kubernetes API forbids {need} to this agent's identity ({_message(exc)}): grant it (the shipped "
            f"ClusterRole does); discovery continues from the container runtime, retrying in "
            f"{self.forbidden_retry_s:g}s"
        )
        self._failed.add(name)
        if self._forbidden.get(name) != need:  # once per missing permission, whichever object was denied
            self._forbidden[name] = need
            emit(log, "kubernetes.forbidden", level=logging.WARNING, watch=name, reason=reason)
            report = KubeReport(ApiStatus.FORBIDDEN, reason, watch=name, permission=need)
            loop.call_soon_threadsafe(self.on_problem, report)

    def _fail(self, name: str, reason: str, loop: asyncio.AbstractEventLoop) -> None:
        self._failed.add(name)
        loop.call_soon_threadsafe(self.on_problem, KubeReport(ApiStatus.FAILED, f"watch {name}: {reason}", watch=name))

    def _ok(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self._forbidden.pop(name, None)
        if not self._forbidden:
            report = KubeReport(ApiStatus.OK, "watching pods of this node and its node")
            loop.call_soon_threadsafe(self.on_problem, report)

    # -- the fallback record -----------------------------------------------------------------------

    def _record(self, pod: Any) -> PodRecord | None:
        status, spec = pod.status, pod.spec
        if status is None or status.phase != "Running" or not status.pod_ip:
            return None
        running = {cs.name: cs for cs in (status.container_statuses or [])}
        containers = []
        for container in spec.containers:
            cs = running.get(container.name)
            ports = tuple(
                DeclaredPort(p.container_port, (p.protocol or "TCP").upper(), p.name or "")  # type: ignore[arg-type]
                for p in (container.ports or [])
            )
            containers.append(
                ContainerRecord(
                    id=ContainerID((cs.container_id or "").split("://")[-1] if cs else ""),
                    name=container.name,
                    image=container.image or "",
                    declared_ports=ports,
                    **_lifecycle(cs),
                )
            )
        meta = pod.metadata
        return PodRecord(
            uid=PodUID(meta.uid),
            name=meta.name,
            namespace=meta.namespace,
            sandbox_id=SandboxID(f"api:{meta.uid}"),
            labels=dict(meta.labels or {}),
            annotations=dict(meta.annotations or {}),
            ip=status.pod_ip,
            containers=tuple(containers),
            owner=self.owner(pod),
            host_network=bool(spec.host_network),
        )


def _controller(obj: Any) -> OwnerKey | None:
    refs = [r for r in (obj.metadata.owner_references or []) if r.controller]
    return (refs[0].kind, obj.metadata.namespace, refs[0].name) if refs else None


def _message(exc: ApiException) -> str:
    with contextlib.suppress(ValueError, TypeError):
        return str(json.loads(exc.body).get("message", exc.reason))
    return str(exc.reason)


def _lifecycle(cs: Any) -> dict[str, Any]:
    """A container status's state, restarts, start or finish time and exit code, as ContainerRecord fields.

    A waiting container that ran before is crash-looping: exited with an unknown code (it keeps its
    ports); one that never ran is created.
    """
    state = cs.state if cs is not None else None
    restarts = int(cs.restart_count or 0) if cs is not None else 0
    if state is not None and state.running is not None:
        started = state.running.started_at
        return {
            "state": ContainerState.RUNNING,
            "attempt": restarts,
            "started_at": started.timestamp() if started else 0.0,
        }
    if state is not None and state.terminated is not None:
        finished = state.terminated.finished_at
        return {
            "state": ContainerState.EXITED,
            "attempt": restarts,
            "exit_code": int(state.terminated.exit_code),
            "finished_at": finished.timestamp() if finished else 0.0,
        }
    if cs is not None and cs.last_state is not None and cs.last_state.terminated is not None:
        return {"state": ContainerState.EXITED, "attempt": restarts}
    return {"state": ContainerState.CREATED, "attempt": restarts}

"""Which instance of a container decides, and what it contributes given its state and age.

kubelet restarts a container by creating a new one with the same name and
``attempt + 1`` and keeps the exited instance, and the runtime lists the two
in no fixed order. So, per container name, exactly one instance decides: the
running one, else the highest attempt (then the newest start).

What the deciding instance contributes is its ``Phase``:

- ``ACTIVE``: running (or created, not yet started): its declared and
  listening ports.
- ``SETTLING``: restarted less than ``SETTLE_S`` ago: its declared and
  listening ports, and it keeps the ports and types it had while its new
  process starts, so a restart whose ports did not change changes nothing.
- ``FAILED``: exited non-zero (or with an unknown code): kubelet restarts it
  (crash loop) or the pod is failing; it keeps its declared ports and the
  ones it had, and the health probes say it is down.
- ``EXITING``: exited 0 less than ``SETTLE_S`` ago: it keeps what it had and
  adds nothing, so a pod whose containers exit just before kubelet stops its
  sandbox changes nothing until the sandbox is gone.
- ``COMPLETED``: exited 0 ``SETTLE_S`` ago or more (a finished init
  container or job step): it contributes no service.

No runtime event says that a process opened a port, and most open theirs a
moment after the runtime says their container started (a JVM: seconds). So
a container that started less than ``WARMUP_STEPS_S[-1]`` ago and listens on
nothing yet asks for passes at those ages (``warms_at``): its ports are found
within about a second of listening, not at the next poll. One that listens
already asks for none (a scale-up of pods that listen at once costs no
extra pass).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cri_agent.model import ContainerRecord, ContainerState

# How long a restarted or just-exited container keeps what it had. A restarted process needs a
# moment to listen again, and kubelet stops a pod's sandbox right after its containers exit.
SETTLE_S = 10.0
# After a container starts: the ages at which a pass looks for the listeners it opened since.
WARMUP_STEPS_S = (1.0, 3.0, 7.0, 15.0)


class Phase(StrEnum):
    ACTIVE = "active"
    SETTLING = "settling"
    FAILED = "failed"
    EXITING = "exiting"
    COMPLETED = "completed"

    @property
    def holds(self) -> bool:
        """The container keeps the services it had even when its process does not show them now."""
        return self in (Phase.SETTLING, Phase.FAILED, Phase.EXITING)

    @property
    def contributes(self) -> bool:
        """Its declared and listening ports are services."""
        return self in (Phase.ACTIVE, Phase.SETTLING, Phase.FAILED)


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """A pod's containers at one instant: the deciding instance of each name, and its phase."""

    instances: tuple[ContainerRecord, ...]
    phases: Mapping[str, Phase]  # by container name
    settles_at: float | None  # when a phase changes by age alone (None: none will)
    warms_at: float | None = None  # when a just-started container's next warm-up pass is due (None: none)


def lifecycle(containers: Iterable[ContainerRecord], *, now: float) -> Lifecycle:
    instances = deciding_instances(containers)
    return Lifecycle(
        instances=tuple(instances),
        phases={c.name: phase(c, now=now) for c in instances},
        settles_at=settles_at(instances, now=now),
        warms_at=warms_at(instances, now=now),
    )


def deciding_instances(containers: Iterable[ContainerRecord]) -> list[ContainerRecord]:
    """One instance per container name (running, else highest attempt, else newest), sorted by name."""
    chosen: dict[str, ContainerRecord] = {}
    for container in containers:
        if container.state == ContainerState.UNKNOWN:
            continue
        current = chosen.get(container.name)
        if current is None or _rank(container) > _rank(current):
            chosen[container.name] = container
    return [chosen[name] for name in sorted(chosen)]


def _rank(container: ContainerRecord) -> tuple[bool, int, float, str]:
    return (container.state == ContainerState.RUNNING, container.attempt, container.started_at, container.id)


def phase(container: ContainerRecord, *, now: float) -> Phase:
    if container.state == ContainerState.EXITED:
        if container.exit_code != 0:
            return Phase.FAILED
        return Phase.EXITING if now - container.finished_at < SETTLE_S else Phase.COMPLETED
    if container.attempt > 0 and (container.state == ContainerState.CREATED or now - container.started_at < SETTLE_S):
        return Phase.SETTLING
    return Phase.ACTIVE


def settles_at(containers: Sequence[ContainerRecord], *, now: float) -> float | None:
    """When the earliest ``SETTLING`` or ``EXITING`` container changes phase by age alone (None: none will)."""
    times = []
    for container in containers:
        if phase(container, now=now) not in (Phase.SETTLING, Phase.EXITING):
            continue
        if container.state == ContainerState.EXITED:
            times.append(container.finished_at + SETTLE_S)
        elif container.state == ContainerState.RUNNING:
            times.append(container.started_at + SETTLE_S)
    return min(times, default=None)


def warms_at(containers: Sequence[ContainerRecord], *, now: float) -> float | None:
    """The next warm-up pass of a running container younger than the last of ``WARMUP_STEPS_S`` that listens on
    nothing yet (None: none)."""
    times = [
        container.started_at + step
        for container in containers
        if container.state == ContainerState.RUNNING and container.started_at and not container.listening
        for step in WARMUP_STEPS_S
        if container.started_at + step > now
    ]
    return min(times, default=None)

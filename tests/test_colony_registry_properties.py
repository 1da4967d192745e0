"""The registry's rules under any interleaving of agents' calls and the colony's housekeeping (hypothesis).

A state machine drives the real ``RegistryWriter`` on a real SQLite file with register / delta / heartbeat /
leave / deregister / expire / enroll / revoke / prune calls from several agents on several nodes, keeps a
plain model of what each agent should hold (writer.py's docstring, the rules), and after every step checks
through a ``RegistryReader``:

- each agent's rows, state and sequence are the model's: its last full registration plus the deltas applied
  in sequence order (a replay is acknowledged and ignored, a gap asks for a full registration);
- an agent's call changes no other agent's rows;
- a node agent holds no row naming another node, and no row belongs to an agent the registry does not know
  (agents past their TTL, their grace window or a revocation hold nothing);
- the audit chain verifies, from its checkpoint once pruned.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from coral_base.vocabulary import AgentHealth
from coral_colony.model import AgentKind, AgentRecord, AgentState, Enrollment, EnrollMethod, ServiceRecord
from coral_colony.stores.reader import RegistryReader
from coral_colony.stores.writer import RegistryWriter


@dataclass(frozen=True)
class Agent:
    agent_id: str
    node_name: str  # "": an agent beside one service, on no node
    kind: AgentKind = AgentKind.NODE_AGENT

    @property
    def record(self) -> AgentRecord:
        return AgentRecord(agent_id=self.agent_id, kind=self.kind, node_name=self.node_name, version="0.1.0")


# Two node agents on node-1 (a rolling update, a second configured agent) and one on no node.
AGENTS = (
    Agent("agent-0", "node-0"),
    Agent("agent-1", "node-1"),
    Agent("agent-2", "node-1"),
    Agent("beside-db", "", AgentKind.SINGLE_SERVICE),
)
NODES = ("node-0", "node-1")
KEYS = tuple(f"shop/uid-{n}/app/8080" for n in range(4))  # agents share keys: each must keep its own rows
HEARTBEAT_TIMEOUT, TTL, GRACE = 30.0, 300.0, 60.0

services = st.builds(
    lambda key, ip, node: ServiceRecord(key=key, component_name=key.split("/")[1], pod_ip=ip, node_name=node),
    st.sampled_from(KEYS),
    st.sampled_from(["10.0.0.1", "10.0.0.2"]),
    st.sampled_from(["", *NODES]),  # "": the agent's own node; else its own or another
)
service_sets = st.lists(services, max_size=4, unique_by=lambda s: s.key)


@dataclass
class Row:
    record: ServiceRecord  # as the registry should keep it (node filled in)
    first_seen: float
    last_seen: float


@dataclass
class Model:
    """What the registry should hold for one agent."""

    state: AgentState
    sequence: int
    last_heartbeat: float
    rows: dict[str, Row] = field(default_factory=dict)
    stale: bool = False


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.writer = RegistryWriter(path)
        self.reader = RegistryReader(path)
        self.now = 1000.0
        self.model: dict[str, Model] = {}
        self.enrolled: dict[str, tuple[str, bool]] = {}  # node -> (key, revoked)

    def teardown(self) -> None:
        self.reader.close()
        self.writer.close()

    # -- what the model expects --------------------------------------------------------

    def _accepted(self, agent: Agent, records: list[ServiceRecord]) -> tuple[list[ServiceRecord], tuple[str, ...]]:
        """The records as kept (a service naming no node is the agent's node's), and the refused keys."""
        kept = [replace(s, node_name=agent.node_name) if not s.node_name else s for s in records]
        refused = tuple(s.key for s in kept if agent.node_name and s.node_name != agent.node_name)
        return [s for s in kept if s.key not in refused], refused

    def _upsert(self, model: Model, records: list[ServiceRecord]) -> None:
        for s in records:
            first = model.rows[s.key].first_seen if s.key in model.rows else self.now
            model.rows[s.key] = Row(s, first_seen=first, last_seen=self.now)

    def _reachable(self, model: Model) -> None:
        model.state, model.stale = AgentState.HEALTHY, False

    def _snapshot_others(self, agent_id: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        conn = self.reader.conn
        rows = conn.execute("SELECT * FROM services WHERE agent_id != ? ORDER BY agent_id, key", [agent_id])
        agents = conn.execute("SELECT * FROM agents WHERE agent_id != ? ORDER BY agent_id", [agent_id])
        return [tuple(r) for r in rows], [tuple(r) for r in agents]

    @contextmanager
    def _only(self, agent: Agent) -> Iterator[None]:
        """The agent's call leaves every other agent's rows (and agent row) as they were."""
        before = self._snapshot_others(agent.agent_id)
        yield
        assert self._snapshot_others(agent.agent_id) == before, f"{agent.agent_id}'s call changed another agent"

    # -- time ----------------------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.0, 1.0, 29.0, 31.0, 61.0, 301.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    # -- agents' calls -------------------------------------------------------------------

    @rule(agent=st.sampled_from(AGENTS), records=service_sets)
    def register(self, agent: Agent, records: list[ServiceRecord]) -> None:
        kept, refused = self._accepted(agent, records)
        with self._only(agent):
            assert self.writer.register(agent.record, records, session="s", now=self.now) == refused
        old = self.model.get(agent.agent_id)
        model = Model(AgentState.HEALTHY, sequence=0, last_heartbeat=self.now)
        model.rows = {k: r for k, r in (old.rows if old else {}).items() if k in {s.key for s in kept}}
        self._upsert(model, kept)
        self.model[agent.agent_id] = model

    @rule(
        agent=st.sampled_from(AGENTS),
        step=st.sampled_from([1, 1, 1, 0, -1, 2]),  # the next one mostly; a replay; a gap
        upserts=service_sets,
        removed=st.lists(st.sampled_from(KEYS), max_size=3),
    )
    def delta(self, agent: Agent, step: int, upserts: list[ServiceRecord], removed: list[str]) -> None:
        model = self.model.get(agent.agent_id)
        sequence = max(0, (model.sequence if model else 0) + step)
        with self._only(agent):
            applied = self.writer.apply(
                agent.agent_id, sequence=sequence, upserts=upserts, removed=removed, now=self.now
            )
        if model is None or model.state is AgentState.LEFT:  # unknown, or its session ended when it left
            assert (applied.applied_sequence, applied.resync_required) == (0, True)
            return
        if sequence <= model.sequence:
            assert (applied.applied_sequence, applied.resync_required) == (model.sequence, False), "replay"
            return
        if sequence != model.sequence + 1:
            assert (applied.applied_sequence, applied.resync_required) == (model.sequence, True), "gap"
            return
        kept, refused = self._accepted(agent, upserts)
        assert (applied.applied_sequence, applied.resync_required, applied.refused_keys) == (sequence, False, refused)
        self._upsert(model, kept)
        for key in removed:
            model.rows.pop(key, None)
        model.sequence, model.last_heartbeat = sequence, self.now
        self._reachable(model)

    @rule(agent=st.sampled_from(AGENTS))
    def heartbeat(self, agent: Agent) -> None:
        with self._only(agent):
            known = self.writer.heartbeat(agent.agent_id, health=AgentHealth.HEALTHY, now=self.now)
        model = self.model.get(agent.agent_id)
        assert known == (model is not None and model.state is not AgentState.LEFT)
        if known and model is not None:
            model.last_heartbeat = self.now
            self._reachable(model)

    @rule(agent=st.sampled_from(AGENTS))
    def leave(self, agent: Agent) -> None:
        with self._only(agent):
            self.writer.leave(agent.agent_id, now=self.now)
        if (model := self.model.get(agent.agent_id)) is not None:
            model.state, model.last_heartbeat, model.stale = AgentState.LEFT, self.now, True

    @rule(agent=st.sampled_from(AGENTS))
    def deregister(self, agent: Agent) -> None:
        with self._only(agent):
            self.writer.deregister(agent.agent_id, now=self.now, why="removed by an operator", actor="op")
        self.model.pop(agent.agent_id, None)

    # -- the colony's housekeeping -------------------------------------------------------------

    @rule()
    def expire(self) -> None:
        silent = sorted(
            a
            for a, m in self.model.items()
            if m.state is AgentState.HEALTHY and m.last_heartbeat < self.now - HEARTBEAT_TIMEOUT
        )
        for agent_id in silent:
            self.model[agent_id].state, self.model[agent_id].stale = AgentState.UNREACHABLE, True
        left = {a for a, m in self.model.items() if m.state is AgentState.LEFT and m.last_heartbeat < self.now - GRACE}
        gone = {a for a, m in self.model.items() if m.last_heartbeat < self.now - TTL}
        found_silent, dropped = self.writer.expire(
            now=self.now, heartbeat_timeout=HEARTBEAT_TIMEOUT, ttl=TTL, grace=GRACE
        )
        assert (sorted(found_silent), sorted(dropped)) == (silent, sorted(left | gone))
        assert len(dropped) == len(set(dropped)), "an agent dropped twice"
        for agent_id in left | gone:
            del self.model[agent_id]

    @rule(node=st.sampled_from(NODES), key=st.sampled_from(["key-a", "key-b"]))
    def enroll(self, node: str, key: str) -> None:
        agent_id = next(a.agent_id for a in AGENTS if a.node_name == node)
        enrollment = Enrollment(
            node_name=node,
            agent_id=agent_id,
            key_sha256=key,
            certificate_sha256=f"cert-{key}-{self.now}",
            not_after=self.now + 86400,
            method=EnrollMethod.SECRET,
            enrolled_at=self.now,
            renewed_at=self.now,
        )
        current = self.enrolled.get(node)
        refusing = self.writer.enroll(enrollment, now=self.now)
        if current is not None and not current[1] and current[0] != key:
            assert refusing is not None and refusing.key_sha256 == current[0]
        else:
            assert refusing is None
            self.enrolled[node] = (key, False)

    @rule(node=st.sampled_from(NODES))
    def revoke(self, node: str) -> None:
        agent_id = next(a.agent_id for a in AGENTS if a.node_name == node)
        current = self.enrolled.get(node)
        revoked = self.writer.revoke(node, by="op-alice", now=self.now)
        if current is None or current[1]:
            assert revoked is None
            return
        model = self.model.pop(agent_id, None)
        assert revoked is not None and revoked[1] == (len(model.rows) if model else 0)
        self.enrolled[node] = (current[0], True)

    @precondition(lambda self: self.now > 1000.0)
    @rule(retention=st.sampled_from([1.0, 60.0, 3600.0]))
    def prune_audit(self, retention: float) -> None:
        self.writer.prune_audit(now=self.now, retention_s=retention)

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def each_agent_holds_what_the_model_says(self) -> None:
        held: dict[str, dict[str, Row]] = {}
        stale: dict[str, set[bool]] = {}
        for s in self.reader.services():
            held.setdefault(s.agent_id, {})[s.service.key] = Row(s.service, s.first_seen, s.last_seen)
            stale.setdefault(s.agent_id, set()).add(s.stale)
        expected = {a: m.rows for a, m in self.model.items() if m.rows}
        assert held == expected
        assert stale == {a: {m.stale} for a, m in self.model.items() if m.rows}

    @invariant()
    def each_agent_is_in_the_state_the_model_says(self) -> None:
        agents = {s.agent.agent_id: (s.state, s.last_heartbeat) for s in self.reader.agents()}
        assert agents == {a: (m.state, m.last_heartbeat) for a, m in self.model.items()}
        for agent_id, model in self.model.items():
            assert self.writer.session_of(agent_id) == ("s", model.sequence)

    @invariant()
    def no_row_names_another_node_or_belongs_to_nobody(self) -> None:
        foreign = self.reader.conn.execute(
            "SELECT s.agent_id, s.key, s.node_name FROM services s LEFT JOIN agents a USING (agent_id)"
            " WHERE a.agent_id IS NULL OR (a.kind = ? AND s.node_name != a.node_name)",
            [AgentKind.NODE_AGENT.value],
        ).fetchall()
        assert [tuple(r) for r in foreign] == []

    @invariant()
    def the_audit_chain_verifies(self) -> None:
        verdict, _ = self.reader.audit_chain()
        assert verdict.ok, str(verdict.broken)


def test_the_registry_keeps_its_rules_under_any_interleaving(tmp_path: Path) -> None:
    files = (tmp_path / f"colony-{n}.db" for n in itertools.count())

    class OnAFreshFile(RegistryMachine):
        def __init__(self) -> None:
            super().__init__(next(files))

    run_state_machine_as_test(OnAFreshFile, settings=settings(max_examples=50, stateful_step_count=25, deadline=None))

"""Table ``agents``: one row per registered agent, its session and its state.

Labels are stored as sorted JSON objects, times as unix seconds.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping

from coral_base.vocabulary import read_word
from coral_colony.model import AgentHealth, AgentKind, AgentRecord, AgentState, AgentStatus

AGENT_COLUMNS: dict[str, type] = {
    "agent_id": str,
    "kind": str,
    "node_name": str,
    "node_labels": str,
    "version": str,
    "labels": str,
    "first_seen": float,
    "last_heartbeat": float,
    "state": str,  # AgentState
    "health": str,  # the agent's own aggregate
    "session": str,  # SHA-256 of the session token, hex: the token itself is never stored
    "last_sequence": int,
}
_UPSERT = (
    f"INSERT INTO agents ({', '.join(AGENT_COLUMNS)}) VALUES ({', '.join(':' + c for c in AGENT_COLUMNS)})"
    " ON CONFLICT (agent_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in AGENT_COLUMNS if c != "agent_id")
)


def labels_json(value: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(value.items())))


def register(conn: sqlite3.Connection, agent: AgentRecord, *, session: str, now: float) -> None:
    """The agent's row, a new session at sequence 0; ``first_seen`` survives a re-registration."""
    old = conn.execute("SELECT first_seen FROM agents WHERE agent_id = ?", [agent.agent_id]).fetchone()
    conn.execute(
        _UPSERT,
        {
            "agent_id": agent.agent_id,
            "kind": agent.kind.value,
            "node_name": agent.node_name,
            "node_labels": labels_json(agent.node_labels),
            "version": agent.version,
            "labels": labels_json(agent.labels),
            "first_seen": old[0] if old else now,
            "last_heartbeat": now,
            "state": AgentState.HEALTHY.value,
            "health": "unknown",
            "session": session,
            "last_sequence": 0,
        },
    )


def session_of(conn: sqlite3.Connection, agent_id: str) -> tuple[str, int] | None:
    """The agent's session token and last applied sequence; None when the colony does not know it."""
    row = conn.execute("SELECT session, last_sequence FROM agents WHERE agent_id = ?", [agent_id]).fetchone()
    return (str(row[0]), int(row[1])) if row else None


def node_of(conn: sqlite3.Connection, agent_id: str) -> str:
    row = conn.execute("SELECT node_name FROM agents WHERE agent_id = ?", [agent_id]).fetchone()
    return str(row[0]) if row else ""


def node_labels_of(conn: sqlite3.Connection, agent_id: str) -> dict[str, str]:
    """The node labels the agent registered with (its services' when they name none)."""
    row = conn.execute("SELECT node_labels FROM agents WHERE agent_id = ?", [agent_id]).fetchone()
    labels: dict[str, str] = json.loads(row[0] or "{}") if row else {}
    return labels


def applied(conn: sqlite3.Connection, agent_id: str, *, sequence: int, now: float) -> None:
    conn.execute(
        "UPDATE agents SET last_sequence = ?, last_heartbeat = ? WHERE agent_id = ?", [sequence, now, agent_id]
    )


def heartbeat(conn: sqlite3.Connection, agent_id: str, *, health: AgentHealth | None, now: float) -> bool:
    """False when there is no such agent, or it left (its session ended with its Deregister)."""
    cursor = conn.execute(
        "UPDATE agents SET last_heartbeat = ?, health = ? WHERE agent_id = ? AND state != ?",
        [now, (health or AgentHealth.UNKNOWN).value, agent_id, AgentState.LEFT.value],
    )
    return cursor.rowcount == 1


def has_left(conn: sqlite3.Connection, agent_id: str) -> bool:
    row = conn.execute("SELECT state FROM agents WHERE agent_id = ?", [agent_id]).fetchone()
    return row is not None and row[0] == AgentState.LEFT.value


def set_state(conn: sqlite3.Connection, agent_id: str, state: AgentState) -> bool:
    """True when the state changed."""
    cursor = conn.execute(
        "UPDATE agents SET state = ? WHERE agent_id = ? AND state != ?", [state.value, agent_id, state.value]
    )
    return cursor.rowcount == 1


def shift_heartbeats(conn: sqlite3.Connection, seconds: float) -> int:
    """Move every agent's last heartbeat by ``seconds`` (the wall clock jumped); how many agents."""
    return conn.execute("UPDATE agents SET last_heartbeat = last_heartbeat + ?", [seconds]).rowcount


def silent(conn: sqlite3.Connection, *, since: float) -> list[tuple[str, str]]:
    """Healthy agents with no heartbeat since ``since``: (agent id, node)."""
    rows = conn.execute(
        "SELECT agent_id, node_name FROM agents WHERE state = ? AND last_heartbeat < ?",
        [AgentState.HEALTHY.value, since],
    )
    return [(str(r[0]), str(r[1])) for r in rows]


def leave(conn: sqlite3.Connection, agent_id: str, *, now: float) -> None:
    """The agent deregistered: ``left``, its last word at ``now`` (what the grace window counts from)."""
    conn.execute(
        "UPDATE agents SET state = ?, last_heartbeat = ? WHERE agent_id = ?", [AgentState.LEFT.value, now, agent_id]
    )


def left(conn: sqlite3.Connection, *, since: float) -> list[tuple[str, float]]:
    """Agents that deregistered before ``since`` and did not register again: (agent id, when it left)."""
    rows = conn.execute(
        "SELECT agent_id, last_heartbeat FROM agents WHERE state = ? AND last_heartbeat < ?",
        [AgentState.LEFT.value, since],
    )
    return [(str(r[0]), float(r[1])) for r in rows]


def gone(conn: sqlite3.Connection, *, since: float) -> list[str]:
    """Agents with no heartbeat since ``since``, whatever their state."""
    return [str(r[0]) for r in conn.execute("SELECT agent_id FROM agents WHERE last_heartbeat < ?", [since])]


def delete(conn: sqlite3.Connection, agent_id: str) -> None:
    conn.execute("DELETE FROM agents WHERE agent_id = ?", [agent_id])


def select(conn: sqlite3.Connection, *, node: str = "") -> list[AgentStatus]:
    """Agents with their service count, by node."""
    where, params = ("WHERE a.node_name = ?", [node]) if node else ("", [])
    cursor = conn.execute(
        f"SELECT a.*, (SELECT COUNT(*) FROM services s WHERE s.agent_id = a.agent_id) AS services "
        f"FROM agents a {where} ORDER BY a.node_name, a.agent_id",
        params,
    )
    return [_status(row) for row in cursor]


def _status(row: sqlite3.Row) -> AgentStatus:
    return AgentStatus(
        agent=AgentRecord(
            agent_id=row["agent_id"],
            kind=AgentKind(row["kind"]),
            node_name=row["node_name"] or "",
            node_labels=json.loads(row["node_labels"] or "{}"),
            version=row["version"] or "",
            labels=json.loads(row["labels"] or "{}"),
        ),
        state=AgentState(row["state"]),
        health=read_word(AgentHealth, row["health"], AgentHealth.UNKNOWN),
        first_seen=row["first_seen"] or 0.0,
        last_heartbeat=row["last_heartbeat"] or 0.0,
        services=int(row["services"]),
    )


def count_by_state(conn: sqlite3.Connection) -> dict[AgentState, int]:
    rows = conn.execute("SELECT state, count(*) FROM agents GROUP BY state")
    counts: dict[AgentState, int] = {}
    for word, count in rows:
        state = read_word(AgentState, word, AgentState.UNREACHABLE)
        counts[state] = counts.get(state, 0) + count
    return counts

"""The SQLite cache: last-known services, pod decisions, discovery events, operations, health, conditions.

One file (default ``/var/lib/coral/agent.db``), WAL mode, one writer: the agent's ``CacheWriter`` owns
the only writing connection on a dedicated thread; the CLI and auditors open it read-only
(``sqlite-utils``, ``sqlite3``). The schema is the auditors' contract and is documented in
docs/audit.md.

- ``writer``: the one writer (``Cache``, ``CacheWriter``), used by ``CacheKeeper``;
- ``reader``: ``CacheReader``, typed reads for the CLI, the tests and the harness;
- one module per table family, its row codecs, writes and typed reads: ``services`` (services and their
  health), ``pods``, ``discovery_events``, ``operations``, ``agent_state`` (conditions and meta);
- ``opening``: how a connection is opened (the version check; readers never migrate the file);
- ``migrations``: the schema as numbered migrations, and the version the file records;
- ``files``: what would make a write crash the process, and whether the path still names the file.

This package imports nothing here, so that ``coral agent status`` loads ``opening`` and ``agent_state``
alone. ``lint-imports`` keeps the order above (a reader never imports the writer).
"""

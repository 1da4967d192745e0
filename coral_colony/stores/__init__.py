"""The colony's SQLite registry, by table family.

``schema`` opens the file and migrates it; ``agents``, ``services`` and
``audit`` each hold one table's columns, its rows to and from the domain
records, and its statements; ``writer`` is the one writer (the registry's
rules, on one thread), ``reader`` the typed read-only access.
"""

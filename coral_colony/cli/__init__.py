"""The colony's commands: ``coral colony init|start|token`` (run it), ``coral agents|services|audit``
(ask it, ``queries``) and ``coral tap|profile|sample`` (operate through it, ``operations``)."""

"""The colony's read-only status page: agents, their services, provenance, staleness."""

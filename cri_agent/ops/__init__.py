"""Control operations on a pod of this node: guardrails, then tap, profile or sample."""

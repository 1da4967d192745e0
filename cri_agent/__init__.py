"""The node agent: discover every workload of a node from its container runtime."""

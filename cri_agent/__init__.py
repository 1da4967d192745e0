"""coral-cri-agent: discover every workload of a node from its container runtime."""

__version__ = "0.1.0"

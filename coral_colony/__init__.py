"""The colony: the central registry node agents register with."""

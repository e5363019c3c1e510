"""The deterministic simulator: many nodes in one process, virtual time, a faulty network."""

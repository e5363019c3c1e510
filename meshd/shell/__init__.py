"""The node's shells: drive the cores over ports (persist, send, act)."""

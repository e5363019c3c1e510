"""Fault injection for tests: tools that make real components fail on purpose."""

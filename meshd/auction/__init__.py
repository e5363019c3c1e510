"""Placement by peer-to-peer reverse auction."""

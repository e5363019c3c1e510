"""Workload drivers: process, qemu, firecracker and fake."""

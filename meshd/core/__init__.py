"""Pure protocol cores: no IO, no clocks, no global random (STYLE.md)."""

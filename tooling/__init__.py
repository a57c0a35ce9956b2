"""Operator tooling: the `lakeloop` command, the demo and its synthetic market, the laptop stack
launcher. Nothing below imports it."""

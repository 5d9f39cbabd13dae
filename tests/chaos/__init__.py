"""Chaos runs and simulated power cuts: the exactly-once promise under faults."""

"""Benchmarks (speed figures; never run by the test suite except as tiny smoke runs)."""

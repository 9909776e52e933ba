"""Simulated peers: one double for each role, used by the suite and by the tests."""

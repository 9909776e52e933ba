"""GB/T 28181 conformance suite: simulated peers, scripted cases, reports."""

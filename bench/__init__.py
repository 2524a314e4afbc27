"""Serving benchmarks: model-only limit, Ray Serve end to end, a hand-written baseline."""

"""Distributed Lightning training on Ray Train, exported to the model store."""

"""What the deployments share: the messages between them (protocol.py), image decoding, errors,
metrics and batching."""

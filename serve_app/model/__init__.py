"""The model deployment (deployment.py: FaceAttributeModel, and CandidateModel during a rollout):
loads a TorchScript artifact and micro-batches inference on one inference thread."""

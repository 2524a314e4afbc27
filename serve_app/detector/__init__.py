"""The FaceDetector deployment (deployment.py): finds every face in a photo, with its box, five
landmarks and score, batched and autoscaled apart from the attribute model (cascade.py runs the
detector artifact's networks)."""

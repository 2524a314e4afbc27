"""The Ingress deployment (deployment.py): HTTP in, decode -> predict -> encode, JSON out."""

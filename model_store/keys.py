"""python -m model_store.keys generate --private-key PATH --public-key PATH

Makes an ed25519 key pair for signing artifacts: training signs with the private key
(``python -m train_job ... --signing-key PATH``), serving verifies with the public key
(``load_artifact(..., trusted_public_key=PATH)``). The private key is written unencrypted with
mode 0600; existing files are never overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_store.signing import public_key_sha256


def _write_new(path: str, data: bytes, mode: int) -> None:
    """Exclusive create: refuses to replace a key someone may still depend on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # O_CREAT's mode is masked by the umask


def generate(private_path: str, public_path: str) -> str:
    """Write a new key pair; returns the public key's sha256 fingerprint."""
    for path in (private_path, public_path):
        if os.path.exists(path):
            raise FileExistsError(f"{path} already exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, 0o600)
    _write_new(public_path, public_pem, 0o644)
    return public_key_sha256(key.public_key())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_store.keys", description="ed25519 keys for signing artifacts"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write a new key pair as PEM files")
    gen.add_argument("--private-key", required=True, help="written with mode 0600")
    gen.add_argument("--public-key", required=True)
    args = parser.parse_args(argv)
    try:
        fingerprint = generate(args.private_key, args.public_key)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"private key {args.private_key} (mode 0600)\npublic key  {args.public_key}")
    print(f"key sha256  {fingerprint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

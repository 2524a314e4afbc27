"""Optional ed25519 signatures over the artifact digest (``cryptography``, installed with Ray).

The signature signs ``SIGNED_PREFIX + digest`` (the hex digest as ASCII), so it covers model.pt
and every metadata field at once; it is stored in metadata.json's ``signature`` object, which
the digest excludes. Keys are PEM files: PKCS#8 private keys (unencrypted, mode 0600) and
SubjectPublicKeyInfo public keys, made by ``python -m model_store.keys generate``.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from model_store.metadata import ArtifactSignature

SIGNED_PREFIX = b"face-attributes-artifact-digest/2:"
PEM_MARKER = "-----BEGIN"


class KeyFileError(ValueError):
    """A key file that is missing or is not the expected ed25519 PEM key."""


def _pem_bytes(key: str | bytes, what: str) -> bytes:
    """``key`` is PEM text itself or the path of a PEM file."""
    if isinstance(key, bytes):
        return key
    if key.lstrip().startswith(PEM_MARKER):
        return key.encode("ascii")
    try:
        return Path(key).expanduser().read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read the {what} {key!r}: {e.strerror or e}") from e


def load_private_key(key: str | bytes | Ed25519PrivateKey) -> Ed25519PrivateKey:
    if isinstance(key, Ed25519PrivateKey):
        return key
    pem = _pem_bytes(key, "signing key")
    try:
        loaded = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"signing key is not an unencrypted PEM private key: {e}") from e
    if not isinstance(loaded, Ed25519PrivateKey):
        raise KeyFileError(f"signing key is a {type(loaded).__name__}, not an ed25519 key")
    return loaded


def load_public_key(key: str | bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    pem = _pem_bytes(key, "public key")
    try:
        loaded = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"public key is not a PEM public key: {e}") from e
    if not isinstance(loaded, Ed25519PublicKey):
        raise KeyFileError(f"public key is a {type(loaded).__name__}, not an ed25519 key")
    return loaded


def public_key_sha256(key: Ed25519PublicKey) -> str:
    """Fingerprint: hex sha256 of the raw 32-byte public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sign_digest(digest: str, private_key: Ed25519PrivateKey) -> ArtifactSignature:
    value = private_key.sign(SIGNED_PREFIX + digest.encode("ascii"))
    return ArtifactSignature(
        public_key_sha256=public_key_sha256(private_key.public_key()),
        value=base64.b64encode(value).decode("ascii"),
    )


def signature_problem(
    digest: str, signature: ArtifactSignature | None, trusted: Ed25519PublicKey
) -> str | None:
    """None when ``signature`` is a valid signature of ``digest`` by ``trusted``, else why not."""
    trusted_id = public_key_sha256(trusted)
    if signature is None:
        return f"it is not signed, and a signature by key {trusted_id[:16]} is required"
    if signature.public_key_sha256 != trusted_id:
        return (
            f"it is signed by key {signature.public_key_sha256[:16]}, not by the trusted key "
            f"{trusted_id[:16]}"
        )
    try:
        trusted.verify(
            base64.b64decode(signature.value, validate=True), SIGNED_PREFIX + digest.encode("ascii")
        )
    except (InvalidSignature, ValueError):
        return f"its signature does not verify with the trusted key {trusted_id[:16]}"
    return None

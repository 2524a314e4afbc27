"""The artifact digest: one sha256 over model.pt and everything in metadata.json.

model.pt's own sha256 cannot notice an edited threshold, a swapped label order or a changed
mean/std/input_size in metadata.json; any of those serves wrong answers with HTTP 200. So::

    digest = sha256(DOMAIN + sha256(model.pt bytes) hex + "\\n" + canonical metadata JSON)

where the canonical JSON is metadata.json's object without the ``digest`` and ``signature``
keys, keys sorted at every level, no whitespace, UTF-8 (so re-indenting or reordering
metadata.json is harmless, changing any value is not). The model's hash is taken from the
bytes themselves, not from metadata's ``sha256`` field, so the digest alone binds both files.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

DOMAIN = b"face-attributes-artifact/2\n"
UNDIGESTED_KEYS = frozenset({"digest", "signature"})


def canonical_metadata(metadata: dict[str, Any]) -> bytes:
    """metadata.json's object minus UNDIGESTED_KEYS, as sorted, compact UTF-8 JSON."""
    covered = {k: v for k, v in metadata.items() if k not in UNDIGESTED_KEYS}
    return json.dumps(
        covered, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True
    ).encode("utf-8")


def artifact_digest(model_sha256: str, metadata: dict[str, Any]) -> str:
    """Hex sha256 of the whole artifact; ``model_sha256`` is the hex sha256 of model.pt."""
    payload = DOMAIN + model_sha256.encode("ascii") + b"\n" + canonical_metadata(metadata)
    return hashlib.sha256(payload).hexdigest()

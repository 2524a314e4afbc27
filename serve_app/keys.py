"""``python -m serve_app.keys``: the API key file the ingress reads (args.api_keys_file).

    python -m serve_app.keys add alice --file keys.yaml [--requests-per-second 20]
        [--images-per-minute 600]     # prints the new key once; the file keeps its sha256
    python -m serve_app.keys remove alice --file keys.yaml
    python -m serve_app.keys list --file keys.yaml

The file is rewritten atomically (a new file renamed over the old), so a running service reads
a whole file, within a few seconds, without a restart (serve_app/ingress/auth.py). On
Kubernetes put it in a Secret (docs/guide-kubernetes.md): the key itself is in neither.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

import yaml

from serve_app.ingress.auth import KeyFile, KeySpec, hash_key, read_key_file

KEY_BYTES = 32  # 256 random bits, URL-safe base64 (43 characters)


def load(path: Path) -> KeyFile:
    return read_key_file(str(path)) if path.exists() else KeyFile()


def save(path: Path, keys: KeyFile) -> None:
    text = (
        "# API keys of the face-attributes service: names and sha256 hashes, never keys.\n"
        "# Written by python -m serve_app.keys; read by the ingress (args.api_keys_file).\n"
        + yaml.safe_dump(keys.model_dump(exclude_none=True), sort_keys=False)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def add(path: Path, name: str, rps: float | None = None, per_minute: int | None = None) -> str:
    keys = load(path)
    if any(k.name == name for k in keys.keys):
        raise SystemExit(f"{name!r} is already in {path}: remove it first, or pick another name")
    key = secrets.token_urlsafe(KEY_BYTES)
    spec = KeySpec(
        name=name, sha256=hash_key(key), requests_per_second=rps, images_per_minute=per_minute
    )
    save(path, KeyFile(keys=[*keys.keys, spec]))
    return key


def remove(path: Path, name: str) -> None:
    keys = load(path)
    kept = [k for k in keys.keys if k.name != name]
    if len(kept) == len(keys.keys):
        raise SystemExit(f"no key named {name!r} in {path}")
    save(path, KeyFile(keys=kept))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.keys", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    adding = commands.add_parser("add", help="make a key, store its hash, print the key once")
    adding.add_argument("name")
    adding.add_argument("--requests-per-second", type=float, default=None)
    adding.add_argument("--images-per-minute", type=int, default=None)
    removing = commands.add_parser("remove", help="revoke a key by its name")
    removing.add_argument("name")
    commands.add_parser("list", help="names and quotas (no keys: the file has none)")
    for sub in commands.choices.values():
        sub.add_argument("--file", type=Path, required=True, help="the key file (YAML)")
    args = parser.parse_args(argv)
    if args.command == "add":
        key = add(args.file, args.name, args.requests_per_second, args.images_per_minute)
        print(key)
        print(f"key {args.name!r} added to {args.file}; it is shown once", file=sys.stderr)
    elif args.command == "remove":
        remove(args.file, args.name)
        print(f"key {args.name!r} removed from {args.file}", file=sys.stderr)
    else:
        for spec in load(args.file).keys:
            quota = ", ".join(
                f"{v:g} {unit}"
                for v, unit in ((spec.requests_per_second, "requests/s"),
                                (spec.images_per_minute, "images/min"))
                if v is not None
            ) or "no quota"  # fmt: skip
            print(f"{spec.name}\t{quota}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

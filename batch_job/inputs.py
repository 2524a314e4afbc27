"""What the job reads: ``--input`` (a folder, a list file or one image; a local path or any URI
the model store opens: s3://, gs://, file://) -> the list of image paths, and one path -> its
bytes, through model_store's filesystem layer (model_store.store.filesystem).

Listing happens once, on the driver, so every input gets its ``input_index`` (its place in the
listing) before anything runs: the job's output is checked against exactly this list.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from dataclasses import dataclass, field

import fsspec
from fsspec.implementations.arrow import ArrowFSWrapper

from model_store.store import filesystem

# File names a folder contributes (case-insensitive); what serving decodes (ALLOWED_FORMATS:
# JPEG, PNG, WebP, BMP, GIF). Other files in a folder are left out and counted in the summary;
# every path a list file names is read, whatever its name.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".mpo")
LIST_EXTENSIONS = (".txt", ".lst", ".list")


class InputError(ValueError):
    """An --input that names nothing to read: the message says what was expected."""


@dataclass
class Inputs:
    paths: list[str]  # in input_index order
    left_out: Counter = field(default_factory=Counter)  # extension -> files a folder left out

    def describe_left_out(self) -> str:
        if not self.left_out:
            return ""
        kinds = ", ".join(f"{ext or '(none)'} x{n}" for ext, n in self.left_out.most_common(5))
        return f"{sum(self.left_out.values())} files without an image extension left out ({kinds})"


def has_protocol(uri: str) -> bool:
    return "://" in uri


def _display(fs: fsspec.AbstractFileSystem, found: str, as_uri: bool) -> str:
    """A listed file as the output names it: a URI when the input was one, else a path."""
    return fs.unstrip_protocol(found) if as_uri else found


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def list_inputs(inputs: list[str], extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> Inputs:
    """Each --input in order: a folder (every file below it whose name ends in ``extensions``,
    sorted), a list file (``.txt``/``.lst``/``.list``: one path or URI a line; blank lines and
    ``#`` comments skipped; a relative path is relative to the list's folder) or one file."""
    result = Inputs([])
    for given in inputs:
        fs, path = filesystem(given)
        as_uri = has_protocol(given)
        if fs.isdir(path):
            found = sorted(fs.find(path))
            for f in found:
                ext = _extension(f)
                if ext in extensions or "*" in extensions:
                    result.paths.append(_display(fs, f, as_uri))
                else:
                    result.left_out[ext] += 1
        elif fs.isfile(path) and _extension(path) in LIST_EXTENSIONS:
            result.paths.extend(_read_list(fs, path, given))
        elif fs.isfile(path):
            result.paths.append(given)
        else:
            raise InputError(
                f"--input {given!r}: no such folder or file (a folder of images, a list file "
                f"{'/'.join(LIST_EXTENSIONS)} with one path or URI a line, or one image)"
            )
    return result


def _read_list(fs: fsspec.AbstractFileSystem, path: str, given: str) -> list[str]:
    with fs.open(path, "rb") as f:
        lines = f.read().decode("utf-8").splitlines()
    base = posixpath.dirname(given.rstrip("/"))
    out = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if not has_protocol(entry) and not posixpath.isabs(entry):
            entry = posixpath.join(base, entry) if base else entry
        out.append(entry)
    return out


class Reader:
    """path -> bytes through the store's filesystem layer, with one filesystem object per
    protocol and bucket: resolving a URI can cost a request (pyarrow's S3 asks the bucket's
    region), which a million files must not pay each."""

    def __init__(self) -> None:
        self._filesystems: dict[str, fsspec.AbstractFileSystem] = {}

    def read(self, uri: str) -> bytes:
        fs, path = self._resolve(uri)
        with fs.open(path, "rb") as f:
            return f.read()

    def _resolve(self, uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
        if not has_protocol(uri):
            key = "file"
        else:
            protocol, rest = uri.split("://", 1)
            key = f"{protocol}://{rest.split('/', 1)[0]}"
        fs = self._filesystems.get(key)
        if fs is None:
            fs, path = filesystem(uri)
            self._filesystems[key] = fs
            return fs, path
        if isinstance(fs, ArrowFSWrapper):  # pyarrow's S3/GCS: "bucket/key"
            return fs, uri.split("://", 1)[1]
        return fs, fs._strip_protocol(uri)


def read_error(e: BaseException) -> tuple[str, str]:
    """A failed read -> (error code, detail) for the output's error columns."""
    if isinstance(e, FileNotFoundError):
        return "not_found", f"no such file: {e}"
    if isinstance(e, (IsADirectoryError, PermissionError)):
        return "unreadable", f"{type(e).__name__}: {e}"
    return "unreadable", f"the file could not be read: {type(e).__name__}: {e}"

"""The storage interface the transfer logic is written against, and its `file://` implementation.

A `Store` is a flat namespace of keys (relative paths with `/`) under one root: an S3 prefix
(`s3.py`) or a local folder (`FileStore`, used for `file://` destinations, by the smoke job and by
tests). Every write is checked after it lands: a file's size and sha256 must read back equal.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from dream_job.artifacts.folder import FileDigest, sha256_file
from dream_job.errors import ArtifactError, DreamJobError
from dream_job.rundir import TMP_SUFFIX, write_atomically, write_text_atomically

BytesCallback = Callable[[int], None]  # called with the number of bytes just transferred


class TextStore(Protocol):
    """Where small state files live (a `Store`, or a Hub repo's `HubStateStore`)."""

    url: str

    def read_text(self, key: str) -> str | None:
        """Return a small object's text, or None when it does not exist."""

    def write_text(self, key: str, text: str) -> None:
        """Write a small object and check that it reads back equal."""


class Store(Protocol):
    """A destination root that holds objects under relative keys."""

    url: str  # the destination as the user wrote it, for messages

    def check_access(self) -> None:
        """Fail early with a clear message when the destination cannot be read or written."""

    def part_size(self, size: int) -> int | None:
        """Return the multipart part size a file of `size` bytes is uploaded with (None: one part)."""

    def probe_write(self, key: str) -> None:
        """Write a tiny object at `key`, read it back and delete it (preflight of write access)."""

    def abort_incomplete_uploads(self, prefix: str) -> int:
        """Remove what interrupted uploads under `prefix` left (S3 multipart uploads, temp files); return how many."""

    def read_text(self, key: str) -> str | None:
        """Return a small object's text, or None when it does not exist."""

    def write_text(self, key: str, text: str) -> None:
        """Write a small object and check that it reads back equal."""

    def delete(self, key: str) -> None:
        """Remove an object if it exists."""

    def list_keys(self, prefix: str) -> list[str]:
        """Return every key under `prefix` (recursively), sorted."""

    def is_current(self, key: str, digest: FileDigest) -> bool:
        """Return True when `key` already holds the file described by `digest`."""

    def put_file(self, path: Path, key: str, digest: FileDigest, on_bytes: BytesCallback | None) -> None:
        """Upload `path` to `key`, then verify size and sha256 of what landed."""

    def get_file(self, key: str, path: Path) -> None:
        """Download `key` to `path` atomically."""


class FileStore:
    """A `file:///path` destination: a local (or mounted) folder."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url

    def check_access(self) -> None:
        """Create the root folder; fail when it is a file or cannot be created."""
        if self.root.exists() and not self.root.is_dir():
            raise ArtifactError(f"destination `{self.url}` is a file, not a folder",
                                hint="point the `file://` destination at a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(f"cannot create destination folder `{self.root}` of `{self.url}`: {exc.strerror}",
                                hint="point the `file://` destination at a folder you may write to") from None

    def abort_incomplete_uploads(self, prefix: str) -> int:
        """Delete `*.tmp-dream-job` files a killed copy left under `root/prefix`; return how many."""
        base = self.root / prefix if prefix else self.root
        leftovers = list(base.rglob(f"*{TMP_SUFFIX}")) if base.is_dir() else []
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)

    def probe_write(self, key: str) -> None:
        """Write `root/key`, read it back and remove it; fail when the folder is not writable."""
        path = self.root / key
        try:
            path.write_bytes(b"dream-job write probe\n")
            ok = path.read_bytes() == b"dream-job write probe\n"
        except OSError as exc:
            raise ArtifactError(f"destination `{self.url}` is not writable: {exc.strerror or exc}",
                                hint="point the `file://` destination at a folder you may write to") from None
        finally:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        if not ok:
            raise ArtifactError(f"destination `{self.url}` did not read back a probe file as written")

    def part_size(self, size: int) -> int | None:
        """Files are copied whole."""
        return None

    def read_text(self, key: str) -> str | None:
        """Return the text of `root/key`, or None."""
        path = self.root / key
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def write_text(self, key: str, text: str) -> None:
        """Write `root/key` atomically and read it back."""
        path = self.root / key
        write_text_atomically(path, text)
        if path.read_text(encoding="utf-8") != text:
            raise ArtifactError(f"`{path}` did not read back as written")

    def delete(self, key: str) -> None:
        """Remove `root/key` if present."""
        (self.root / key).unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> list[str]:
        """Return the relative paths of all files under `root/prefix`."""
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def is_current(self, key: str, digest: FileDigest) -> bool:
        """Return True when `root/key` has the same size and sha256."""
        path = self.root / key
        return path.is_file() and path.stat().st_size == digest.size and sha256_file(path) == digest.sha256

    def put_file(self, path: Path, key: str, digest: FileDigest, on_bytes: BytesCallback | None) -> None:
        """Copy `path` to `root/key` through a temporary name, then re-hash the copy."""
        target = self.root / key
        _copy_atomic(path, target, on_bytes)
        actual = sha256_file(target)
        if actual != digest.sha256:
            raise ArtifactError(
                f"the copy of `{digest.relpath}` at `{target}` has sha256 `{actual}`, expected `{digest.sha256}`"
            )

    def get_file(self, key: str, path: Path) -> None:
        """Copy `root/key` to `path` through a temporary name."""
        source = self.root / key
        if not source.is_file():
            raise ArtifactError(f"`{source}` is missing from `{self.url}`")
        _copy_atomic(source, path, None)


def _copy_atomic(source: Path, target: Path, on_bytes: BytesCallback | None) -> None:
    """Copy `source` to `target` through `rundir.write_atomically` (temp name, fsync, rename), with its metadata."""
    def copy(tmp: Path) -> None:
        with source.open("rb") as src, tmp.open("wb") as dst:
            while block := src.read(8 * 1024 * 1024):
                dst.write(block)
                if on_bytes is not None:
                    on_bytes(len(block))
        shutil.copystat(source, tmp)

    try:
        write_atomically(target, copy)
    except DreamJobError as exc:  # the writer names the file and the cause (disk full, permission, ...)
        raise ArtifactError(f"copying `{source}` to `{target}` failed", caused_by=[exc.message],
                            hint=exc.hint) from None

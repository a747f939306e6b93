"""Local-folder side of artifacts: file hashes, `MANIFEST.sha256`, the run marker, export checks.

A published folder carries `MANIFEST.sha256` (the `sha256sum` format: `<hex>  <relative path>`,
one line per file, sorted) listing every file but itself, the run marker and the Hub client's
`.cache/` metadata. The destination also holds `dream_job_run.json` (`{"run_id": ...}`), which
says which run owns it, so a second run does not silently overwrite the first.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dream_job.errors import ArtifactError
from dream_job.rundir import (  # the names are the run-dir contract's; re-exported for the artifacts modules
    COMPLETE_NAME, MANIFEST_NAME, RUN_MARKER_NAME, TMP_SUFFIX,
)

__all__ = ["COMPLETE_NAME", "MANIFEST_NAME", "RUN_MARKER_NAME", "TMP_SUFFIX"]
# Never listed in a manifest: the manifest itself, the run marker, and the Hub client's own resume
# state (`.cache/huggingface/` inside `local_dir` / `folder_path`).
_EXCLUDED_FILES = {MANIFEST_NAME, RUN_MARKER_NAME}
_EXCLUDED_DIRS = {".cache", ".git"}
_BLOCK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileDigest:
    """What we know about one local file: size, sha256 and, for multipart uploads, per-part sha256."""

    relpath: str
    size: int
    sha256: str
    part_size: int | None = None
    part_sha256: tuple[bytes, ...] = ()

    def composite_sha256(self) -> str | None:
        """Return S3's composite checksum (`base64(sha256(part digests))-N`) or None if single-part."""
        if self.part_size is None:
            return None
        digest = hashlib.sha256(b"".join(self.part_sha256)).digest()
        return f"{base64.b64encode(digest).decode()}-{len(self.part_sha256)}"


def hash_file(path: Path, relpath: str, *, part_size: int | None = None) -> FileDigest:
    """Read `path` once and return its sha256 (and per-part sha256 for parts of `part_size` bytes)."""
    full = hashlib.sha256()
    parts: list[bytes] = []
    part = hashlib.sha256()
    in_part = size = 0
    with path.open("rb") as handle:
        while True:
            want = _BLOCK_BYTES if part_size is None else min(_BLOCK_BYTES, part_size - in_part)
            block = handle.read(want)
            if not block:
                break
            full.update(block)
            size += len(block)
            if part_size is not None:
                part.update(block)
                in_part += len(block)
                if in_part == part_size:
                    parts.append(part.digest())
                    part, in_part = hashlib.sha256(), 0
    if part_size is not None and in_part:
        parts.append(part.digest())
    return FileDigest(relpath, size, full.hexdigest(), part_size, tuple(parts))


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file."""
    return hash_file(path, path.name).sha256


def list_files(folder: Path) -> list[str]:
    """Return the relative paths (with `/`) of the files a manifest covers, sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _EXCLUDED_DIRS and not d.endswith(".partial"))
        rel_root = Path(root).relative_to(folder)
        for name in files:
            rel = (rel_root / name).as_posix()
            if rel in _EXCLUDED_FILES or name.endswith(TMP_SUFFIX):
                continue
            if "\n" in rel or "\\" in rel:
                raise ArtifactError(f"file name `{rel!r}` in `{folder}` cannot be listed in `{MANIFEST_NAME}`")
            found.append(rel)
    return sorted(found)


def render_manifest(sha256_by_path: dict[str, str]) -> str:
    """Return manifest text: `<sha256>  <path>` per line, sorted by path (what `sha256sum -c` reads)."""
    return "".join(f"{sha}  {rel}\n" for rel, sha in sorted(sha256_by_path.items()))


def parse_manifest(text: str, where: str) -> dict[str, str]:
    """Parse manifest text into `{relative path: sha256}`.

    Raises:
        ArtifactError: A line is not `<64 hex digits>  <path>`.
    """
    result = {}
    for number, line in enumerate(text.splitlines(), start=1):
        sha, sep, rel = line.partition("  ")
        if not sep or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha) or not rel:
            raise ArtifactError(f"line {number} of `{where}` is not `<sha256>  <path>`, got `{line[:120]}`")
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise ArtifactError(f"line {number} of `{where}` names a path outside the folder: `{rel}`")
        result[rel] = sha
    return result


def verify_folder(folder: Path, manifest: dict[str, str], where: str, *, shown: Path | None = None) -> None:
    """Check that every file of `manifest` is in `folder` with the listed sha256.

    Args:
        shown: The folder to name in messages when `folder` is its staging copy (a pull).

    Raises:
        ArtifactError: Files are missing or differ (each named with the expected and actual hash).
    """
    problems = []
    for rel, expected in sorted(manifest.items()):
        path = folder / rel
        if not path.is_file():
            problems.append(f"`{rel}` is missing")
            continue
        actual = sha256_file(path)
        if actual != expected:
            problems.append(f"`{rel}` has sha256 `{actual}`, `{MANIFEST_NAME}` lists `{expected}`")
    folder = shown or folder
    if problems:
        raise ArtifactError(
            f"`{folder}` does not match the `{MANIFEST_NAME}` of `{where}` ({len(problems)} of {len(manifest)} files)",
            caused_by=problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else []),
            hint=f"pull again (`dream-job pull {where} {folder}` fetches only the differing files); if it fails "
                 "again, the source changed after it was published: publish it again",
        )


def marker_text(run_id: str) -> str:
    """Return the content of `dream_job_run.json` for `run_id`."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return json.dumps({"run_id": run_id, "tool": "dream-job", "created_at": stamp}, indent=2) + "\n"


def check_marker(existing: str | None, *, run_id: str, force: bool, where: str) -> bool:
    """Refuse a destination owned by another run; return True when the marker must be (re)written.

    Raises:
        ArtifactError: `existing` names another run and `force` is False.
    """
    if existing is None:
        return True
    try:
        owner = json.loads(existing).get("run_id")
    except (ValueError, AttributeError):
        owner = None
    if owner == run_id:
        return False
    if force:
        return True
    raise ArtifactError(
        f"`{where}` already holds run `{owner}` (its `{RUN_MARKER_NAME}`), refusing to publish run `{run_id}` over it",
        hint="publish to another destination, or pass `--force` to overwrite that run's files",
    )


def check_dream_export(folder: Path, *, shown: Path | None = None) -> None:
    """Check that `folder` is a Dream HF export: config with `model_type: Dream` and a complete safetensors index.

    `shown` is the folder to name in messages when `folder` is its staging copy (a pull).

    Raises:
        ArtifactError: `config.json` or `model.safetensors.index.json` is missing or wrong, or a shard is missing.
    """
    hint = "pull a folder written by `dream-job` export (it holds `config.json` and `model.safetensors.index.json`)"
    staged, folder = folder, shown or folder
    config = _read_json(staged / "config.json", hint, folder / "config.json")
    model_type = config.get("model_type")
    if model_type != "Dream":
        raise ArtifactError(
            f"`{folder}` is not a Dream export: `config.json` has `model_type` `{model_type}`, expected `Dream`",
            hint=hint,
        )
    index_path = folder / "model.safetensors.index.json"
    weight_map = _read_json(staged / index_path.name, hint, index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ArtifactError(f"`{index_path}` has no `weight_map`", hint=hint)
    missing = sorted({shard for shard in weight_map.values() if not (staged / shard).is_file()})
    if missing:
        raise ArtifactError(
            f"`{folder}` is not a complete Dream export: shards named in `model.safetensors.index.json` are missing",
            caused_by=[f"`{name}` is missing" for name in missing],
            hint=hint,
        )


def _read_json(path: Path, hint: str, shown: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ArtifactError(f"`{shown}` is missing, so this is not a Dream export", hint=hint)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ArtifactError(f"`{shown}` is not valid JSON", caused_by=[str(exc)], hint=hint) from None
    if not isinstance(data, dict):
        raise ArtifactError(f"`{shown}` must hold a JSON object", hint=hint)
    return data

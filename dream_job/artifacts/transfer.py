"""Publish, pull and checkpoint sync, written once against the `Store` interface (S3 and file://).

Layout at a destination root:
```
<root>/dream_job_run.json                  which run owns the root (written first)
<root>/<files of the published folder>
<root>/MANIFEST.sha256                     written last: a root without it is unfinished
<root>/<run_id>/checkpoints/step-000120/   DCP shards, MANIFEST.sha256, then COMPLETE (last)
```
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dream_job.artifacts.folder import (
    FileDigest, check_dream_export, check_marker, hash_file, list_files, marker_text, parse_manifest,
    render_manifest, sha256_file, verify_folder,
)
from dream_job.artifacts.stores import Store
from dream_job.errors import EXIT_TRANSIENT, ArtifactError
from dream_job.stopping import pause_point
from dream_job.rundir import (
    COMPLETE_NAME, MANIFEST_NAME, RUN_MARKER_NAME, RUN_NAME_RE, STEP_RE, write_text_atomically,
)

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
"""Called as `progress(relative_path, bytes_done, file_size)` while a file moves, and once with
`bytes_done == file_size` when it is done or skipped."""



@dataclass(frozen=True)
class PublishResult:
    """What a publish did.

    Attributes:
        destination: The destination URL.
        num_files: Files in the published folder (the manifest's entries).
        num_uploaded: Files sent in this call.
        num_skipped: Files already at the destination with the same sha256.
        bytes_uploaded: Bytes sent in this call.
        sha256: `{relative path: sha256}` as written to `MANIFEST.sha256`.
    """

    destination: str
    num_files: int
    num_uploaded: int
    num_skipped: int
    bytes_uploaded: int
    sha256: dict[str, str] = field(default_factory=dict)


def digest_folder(folder: Path, store: Store | None = None) -> list[FileDigest]:
    """Hash every file a manifest covers (per part too when `store` uploads it in parts)."""
    digests = []
    for rel in list_files(folder):
        path = folder / rel
        part_size = store.part_size(path.stat().st_size) if store is not None else None
        digests.append(hash_file(path, rel, part_size=part_size))
    return digests


def publish_to_store(store: Store, local: Path, *, run_id: str, force: bool,
                     progress: ProgressFn | None) -> PublishResult:
    """Upload `local` to `store` (marker, files, manifest last); see `dream_job.artifacts.publish_folder`."""
    if not local.is_dir():
        raise ArtifactError(f"`{local}` is not a folder, nothing to publish")
    store.check_access()
    store.abort_incomplete_uploads("")  # parts left by an earlier, killed publish of this root
    write_marker = check_marker(store.read_text(RUN_MARKER_NAME), run_id=run_id, force=force, where=store.url)
    digests = digest_folder(local, store)
    if not digests:
        raise ArtifactError(f"`{local}` holds no files to publish")
    manifest = render_manifest({d.relpath: d.sha256 for d in digests})
    if write_marker:
        store.write_text(RUN_MARKER_NAME, marker_text(run_id))
    remote_manifest = store.read_text(MANIFEST_NAME)
    if remote_manifest is not None and remote_manifest != manifest:
        store.delete(MANIFEST_NAME)  # the root reads as unfinished until the new manifest lands
    num_uploaded, bytes_uploaded = _put_files(store, local, digests, "", progress)
    if remote_manifest != manifest:
        store.write_text(MANIFEST_NAME, manifest)
    if store.read_text(MANIFEST_NAME) != manifest:
        raise ArtifactError(f"`{MANIFEST_NAME}` at `{store.url}` does not read back as written",
                            hint="re-run the publish", exit_code=EXIT_TRANSIENT)
    logger.info("published %s to %s: %d files uploaded (%.1f MB), %d already there",
                local, store.url, num_uploaded, bytes_uploaded / 1e6, len(digests) - num_uploaded)
    return PublishResult(store.url, len(digests), num_uploaded, len(digests) - num_uploaded, bytes_uploaded,
                         {d.relpath: d.sha256 for d in digests})


def _put_files(store: Store, local: Path, digests: list[FileDigest], key_prefix: str,
               progress: ProgressFn | None) -> tuple[int, int]:
    """Upload the files not already current; return (files uploaded, bytes uploaded)."""
    num_uploaded = bytes_uploaded = 0
    total_bytes = sum(d.size for d in digests)
    for index, digest in enumerate(digests):
        key = key_prefix + digest.relpath
        if store.is_current(key, digest):
            if progress is not None:
                progress(digest.relpath, digest.size, digest.size)
            continue
        done = [0]

        def on_bytes(num_bytes: int, digest: FileDigest = digest, done: list[int] = done) -> None:
            done[0] = max(0, min(digest.size, done[0] + num_bytes))
            if progress is not None:
                progress(digest.relpath, done[0], digest.size)

        try:
            store.put_file(local / digest.relpath, key, digest, on_bytes)
        except ArtifactError as exc:
            if exc.exit_code != EXIT_TRANSIENT:
                raise
            so_far = sum(d.size for d in digests[:index])
            raise ArtifactError(
                exc.message,
                caused_by=[*exc.caused_by, f"done so far: {index} of {len(digests)} files "
                           f"({so_far / 1e6:.1f} of {total_bytes / 1e6:.1f} MB), {num_uploaded} uploaded by this call"],
                hint="re-run the same command; files already at the destination with the same sha256 are skipped",
                exit_code=EXIT_TRANSIENT,
            ) from None
        num_uploaded += 1
        bytes_uploaded += digest.size
        pause_point("publish:file")
        if progress is not None:
            progress(digest.relpath, digest.size, digest.size)
    return num_uploaded, bytes_uploaded


def pull_from_store(store: Store, dest: Path, *, reuse: Path | None = None, shown: Path | None = None) -> str:
    """Download the files listed in the root's manifest into `dest` (a staging folder), then verify; return the manifest.

    Files already in `dest` with the listed sha256 are kept; a file of `reuse` (an earlier pull of
    the same model) with the listed sha256 is linked (or copied) instead of downloaded. Messages
    name `shown` (the folder the staging one will become) when given.
    """
    store.check_access()
    text = store.read_text(MANIFEST_NAME)
    if text is None:
        raise ArtifactError(
            f"`{store.url}` has no `{MANIFEST_NAME}`: nothing was published there, or the publish did not finish",
            hint="re-run the publish (it resumes), or check the destination URL",
        )
    manifest = parse_manifest(text, f"{store.url}/{MANIFEST_NAME}")
    _get_files(store, "", manifest, dest, reuse=reuse)
    write_text_atomically(dest / MANIFEST_NAME, text)
    verify_folder(dest, manifest, store.url, shown=shown)
    check_dream_export(dest, shown=shown)
    return text


def _get_files(store: Store, key_prefix: str, manifest: dict[str, str], dest: Path, *,
               reuse: Path | None = None) -> None:
    for rel, sha in sorted(manifest.items()):
        path = dest / rel
        if path.is_file() and sha256_file(path) == sha:
            continue
        earlier = reuse / rel if reuse is not None else None
        if earlier is not None and earlier.is_file() and sha256_file(earlier) == sha:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            try:
                os.link(earlier, path)
            except OSError:
                shutil.copy2(earlier, path)
            continue
        store.get_file(key_prefix + rel, path)
        pause_point("pull:file")


def sync_checkpoint_to_store(store: Store, step_dir: Path, *, run_id: str) -> None:
    """Upload a complete checkpoint; see `dream_job.artifacts.sync_checkpoint`."""
    if not STEP_RE.fullmatch(step_dir.name) or not step_dir.is_dir():
        raise ArtifactError(f"`{step_dir}` is not a checkpoint folder named `step-NNNNNN`")
    if not (step_dir / COMPLETE_NAME).is_file():
        raise ArtifactError(
            f"checkpoint `{step_dir}` has no `{COMPLETE_NAME}` marker, so it is torn or still being written",
            hint="sync only checkpoints the checkpoint manager finished (it writes `COMPLETE` last)",
        )
    _check_run_id(run_id)
    store.check_access()
    base = f"{run_id}/checkpoints/{step_dir.name}/"
    store.abort_incomplete_uploads(base)
    digests = [d for d in digest_folder(step_dir, store) if d.relpath != COMPLETE_NAME]
    complete = hash_file(step_dir / COMPLETE_NAME, COMPLETE_NAME)
    manifest = render_manifest({d.relpath: d.sha256 for d in digests})
    remote_manifest = store.read_text(base + MANIFEST_NAME)
    if remote_manifest is not None and remote_manifest != manifest:
        store.delete(base + COMPLETE_NAME)  # a different save of this step: unmark it before changing files
        store.delete(base + MANIFEST_NAME)
    num_uploaded, num_bytes = _put_files(store, step_dir, digests, base, None)
    if remote_manifest != manifest:
        store.write_text(base + MANIFEST_NAME, manifest)
    if not store.is_current(base + COMPLETE_NAME, complete):
        store.put_file(step_dir / COMPLETE_NAME, base + COMPLETE_NAME, complete, None)
    logger.info("synced checkpoint %s to %s/%s: %d files (%.1f MB) uploaded",
                step_dir.name, store.url, base.rstrip("/"), num_uploaded, num_bytes / 1e6)


def fetch_latest_from_store(store: Store, run_id: str, local_root: Path) -> int | None:
    """Download the newest complete remote checkpoint; see `dream_job.artifacts.fetch_latest_checkpoint`."""
    _check_run_id(run_id)
    store.check_access()
    base = f"{run_id}/checkpoints/"
    complete = {}
    for key in store.list_keys(base):
        match = re.fullmatch(f"{re.escape(base)}({STEP_RE.pattern})/{re.escape(COMPLETE_NAME)}", key)
        if match:
            complete[int(match.group(2))] = match.group(1)
    if not complete:
        logger.info("no complete checkpoint of run %s at %s", run_id, store.url)
        return None
    step = max(complete)
    name = complete[step]
    target = local_root / name
    if (target / COMPLETE_NAME).is_file():
        return step
    text = store.read_text(base + name + "/" + MANIFEST_NAME)
    if text is None:
        raise ArtifactError(f"checkpoint `{store.url}/{base}{name}` has `{COMPLETE_NAME}` but no `{MANIFEST_NAME}`",
                            hint="it was not written by `dream-job`; remove it or sync the checkpoint again")
    manifest = parse_manifest(text, f"{store.url}/{base}{name}/{MANIFEST_NAME}")
    partial = local_root / f".{name}.partial"  # kept on failure: the next attempt skips what it holds
    _get_files(store, base + name + "/", manifest, partial)
    write_text_atomically(partial / MANIFEST_NAME, text)
    verify_folder(partial, manifest, f"{store.url}/{base}{name}")
    store.get_file(base + name + "/" + COMPLETE_NAME, partial / COMPLETE_NAME)
    if target.exists():  # a torn local copy of the same step (no COMPLETE)
        shutil.rmtree(target)
    os.replace(partial, target)
    logger.info("fetched checkpoint %s of run %s from %s", name, run_id, store.url)
    return step


def _check_run_id(run_id: str) -> None:
    if not RUN_NAME_RE.fullmatch(run_id):
        raise ArtifactError(f"run id `{run_id}` must be letters, digits, `.`, `_` or `-`")

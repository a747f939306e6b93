"""Publish run results and checkpoints to `s3://`, `hf://` and `file://` destinations, and pull them back.

Public API (the `dream-job pull` verb and the pipeline's publish stage call these):
- `publish_folder(local, destination, run_id=...)`: upload a folder (an export) with a `MANIFEST.sha256`;
- `pull(source, dest)`: download a published folder, verify every file, check it is a Dream export;
- `sync_checkpoint(step_dir, destination, run_id=...)`: upload a complete `step-NNNNNN/` for spot recovery;
- `fetch_latest_checkpoint(destination, run_id, local_root)`: download the newest complete one;
- `write_model_card(folder, ...)`: the Hub model card (`README.md`).

Modules: `folder` (hashes, manifest, run marker, export check), `stores` (the storage interface and
`file://`), `s3` (boto3), `hub` (huggingface_hub), `transfer` (publish/pull/sync over a store),
`card` (model card). Every transfer is resumable: files already at the destination with the same
sha256 are skipped. Transient failures raise `ArtifactError` with exit code 3 after bounded retries.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from dream_job.artifacts.card import ModelCardInputs, model_card_inputs, write_model_card
from dream_job.artifacts.folder import MANIFEST_NAME, RUN_MARKER_NAME, check_dream_export, parse_manifest, verify_folder
from dream_job.artifacts.stores import FileStore, Store, TextStore
from dream_job.artifacts.transfer import (
    ProgressFn, PublishResult, fetch_latest_from_store, publish_to_store, pull_from_store, sync_checkpoint_to_store,
)
from dream_job.errors import ArtifactError

if TYPE_CHECKING:  # imported lazily at run time (`__getattr__`), so `file://` works without boto3
    from dream_job.artifacts.s3 import S3Settings

__all__ = [
    "MANIFEST_NAME", "RUN_MARKER_NAME", "ModelCardInputs", "ProgressFn", "PublishResult", "S3Settings",
    "check_destination", "fetch_latest_checkpoint", "model_card_inputs", "publish_folder", "pull", "state_store",
    "sync_checkpoint", "write_model_card",
]

_HUB_REPO_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_FORMS = "`s3://bucket/prefix`, `hf://user/repo`, `file:///absolute/path` or `file://relative/path`"


def __getattr__(name: str) -> object:
    # `S3Settings` lives with boto3's code; import it only when asked, so `file://` needs no boto3.
    if name == "S3Settings":
        from dream_job.artifacts.s3 import S3Settings

        return S3Settings
    raise AttributeError(name)


def publish_folder(local: Path, destination: str, *, run_id: str, force: bool = False,
                   progress: ProgressFn | None = None, s3: S3Settings | None = None,
                   model_card: ModelCardInputs | None = None) -> PublishResult:
    """Upload the folder `local` to `destination` and verify every file landed intact.

    Order at an `s3://` or `file://` root: `dream_job_run.json` (claims the root for `run_id`),
    then each file not already there with the same sha256 (S3: multipart above the threshold,
    sha256 as metadata plus S3's SHA256 checksum, read back by HEAD; file: copy to a temporary
    name, rename, re-hash), then `MANIFEST.sha256` last, read back and compared. A root without a
    manifest is therefore unfinished; re-running resumes and uploads only what differs.
    For `hf://user/repo` it writes the model card (`README.md`, from `model_card`, or a minimal one
    when the folder has none), `dream_job_run.json` and `MANIFEST.sha256` into `local`, creates a
    private repo and uploads the files that differ from the repo (see `dream_job.artifacts.hub`).

    Args:
        local: The folder to publish (usually `<run>/export/`).
        destination: `s3://bucket/prefix`, `hf://user/repo` or `file:///path`.
        run_id: The run publishing; a destination owned by another run is refused.
        force: Publish over another run's files (they are overwritten, not deleted).
        progress: `progress(relative_path, bytes_done, file_size)`, called as bytes move.
        s3: Endpoint, multipart and retry settings for `s3://` (default: `S3Settings()`, endpoint
            from `AWS_ENDPOINT_URL`).
        model_card: The card's inputs for `hf://` (see `model_card_inputs`).

    Returns:
        What was uploaded and skipped, and the manifest.

    Raises:
        ArtifactError: Bad destination or credentials, a missing bucket, another run's root
            (exit 1); the store failing after all retries (exit 3, with what was done so far).
    """
    kind, target = _parse(destination)
    if kind == "hf":
        from dream_job.artifacts.hub import publish_to_hub

        return publish_to_hub(Path(local), target, run_id=run_id, force=force, card=model_card, progress=progress)
    return publish_to_store(_store(kind, target, destination, s3), Path(local), run_id=run_id, force=force,
                            progress=progress)


def pull(source: str, dest: Path, *, s3: S3Settings | None = None, force: bool = False) -> Path:
    """Download a published model folder into `dest`, verify it and check it is a Dream export.

    Nothing in `dest` is touched until the whole model is verified: files land in a staging
    folder beside it (`.<name>.partial-pull`, kept on failure so a re-run fetches only what is
    missing or differs), every sha256 is checked against the source's `MANIFEST.sha256`, and only
    then does the staging folder replace `dest`. A non-empty `dest` is refused unless it holds an
    earlier `dream-job pull` of the same model (its files are reused, not fetched again) or
    `force` is given. `hf://` uses `snapshot_download(local_dir=<staging>)`; `s3://` and `file://`
    fetch the files listed in the source's manifest.

    Args:
        source: `s3://bucket/prefix`, `hf://user/repo` or `file:///path`.
        dest: The folder to fill (created if missing).
        s3: Settings for `s3://` sources.
        force: Replace a `dest` holding other files (they are deleted).

    Returns:
        `dest`.

    Raises:
        ArtifactError: `dest` is a file or holds files of something else; the source has no
            manifest, a file is missing or its sha256 differs, or the folder is not a Dream export
            (`config.json` `model_type: Dream` + safetensors index). `dest` is then unchanged.
    """
    dest = Path(dest)
    kind, target = _parse(source)
    earlier = _check_pull_destination(dest, source, force=force)
    staging = dest.with_name(f".{dest.name}.partial-pull")
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot create `{staging}` to pull `{source}` into: {exc.strerror or exc}",
                            hint="pull into a folder you may write to") from None
    if kind != "hf":
        text = pull_from_store(_store(kind, target, source, s3), staging, reuse=dest if earlier else None,
                               shown=dest)
    else:
        from dream_job.artifacts.hub import pull_from_hub

        pull_from_hub(target, staging)
        manifest_path = staging / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ArtifactError(f"`{source}` has no `{MANIFEST_NAME}`, so its files cannot be verified",
                                hint="publish it with `dream-job` (which writes the manifest), or check the repo id")
        text = manifest_path.read_text(encoding="utf-8")
        verify_folder(staging, parse_manifest(text, f"{source}/{MANIFEST_NAME}"), source, shown=dest)
        check_dream_export(staging, shown=dest)
    if earlier is not None and earlier != text and not force:
        raise ArtifactError(
            f"`{dest}` holds another model pulled earlier (its `{MANIFEST_NAME}` differs from `{source}`'s)",
            hint=f"pull into a new folder, or pass `--force` to replace it (the verified copy waits in `{staging}`)")
    _swap_into_place(staging, dest)
    return dest


def _check_pull_destination(dest: Path, source: str, *, force: bool) -> str | None:
    """Refuse a `dest` that is a file, or that holds files `dream-job pull` did not write (unless `force`).

    Returns:
        The `MANIFEST.sha256` text of an earlier pull in `dest`, or None (empty, missing or forced).
    """
    if dest.exists() and not dest.is_dir():
        raise ArtifactError(f"`{dest}` is a file, not a folder to pull `{source}` into",
                            hint="pass a new or empty folder as the destination")
    if not dest.is_dir() or not any(dest.iterdir()):
        return None
    manifest = dest / MANIFEST_NAME
    if manifest.is_file():
        return manifest.read_text(encoding="utf-8")
    if force:
        return None
    count = sum(1 for p in dest.rglob("*") if p.is_file())
    raise ArtifactError(f"`{dest}` is not empty ({count} files) and holds no earlier `dream-job pull`",
                        hint="pull into a new or empty folder, or pass `--force` to replace what is there")


def _swap_into_place(staging: Path, dest: Path) -> None:
    """Replace `dest` by the verified `staging` folder (two renames that a stop never splits)."""
    import shutil

    from dream_job.stopping import deferred

    old = dest.with_name(f".{dest.name}.replaced")
    shutil.rmtree(old, ignore_errors=True)
    with deferred():
        if dest.exists():
            dest.rename(old)
        staging.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def sync_checkpoint(local_step_dir: Path, destination: str, *, run_id: str, s3: S3Settings | None = None) -> None:
    """Upload a complete checkpoint to `<destination>/<run_id>/checkpoints/step-NNNNNN/`.

    Files not already there with the same sha256 go first, then `MANIFEST.sha256`, then
    `COMPLETE` last, so a remote checkpoint counts only once all of it has landed. A different
    save of the same step loses its remote `COMPLETE` before any file changes.

    Args:
        local_step_dir: `<run>/checkpoints/step-NNNNNN/`, holding the `COMPLETE` marker.
        destination: `s3://bucket/prefix` or `file:///path`.
        run_id: Names the folder the run's checkpoints go under.
        s3: Settings for `s3://`.

    Raises:
        ArtifactError: The checkpoint has no `COMPLETE` marker, the destination is `hf://`, or the
            store fails (exit 3 after retries).
    """
    sync_checkpoint_to_store(_checkpoint_store(destination, s3), Path(local_step_dir), run_id=run_id)


def fetch_latest_checkpoint(destination: str, run_id: str, local_root: Path, *,
                            s3: S3Settings | None = None) -> int | None:
    """Download the newest complete remote checkpoint of `run_id` into `local_root/step-NNNNNN/`.

    Only remote steps with `COMPLETE` count. Files land in `local_root/.step-NNNNNN.partial/`
    (kept on failure, so a retry skips what arrived), are verified against the step's manifest,
    then `COMPLETE` is written and the folder renamed into place. A step already complete
    locally is not downloaded again.

    Args:
        destination: `s3://bucket/prefix` or `file:///path` the run synced to.
        run_id: The run whose checkpoints to fetch.
        local_root: `<run>/checkpoints/`.
        s3: Settings for `s3://`.

    Returns:
        The step fetched (or already present), or None when the destination has no complete one.

    Raises:
        ArtifactError: A downloaded file differs from the manifest, or the store fails.
    """
    return fetch_latest_from_store(_checkpoint_store(destination, s3), run_id, Path(local_root))


def check_destination(destination: str, *, s3_endpoint_url: str | None = None) -> None:
    """Check that `destination` can be written now, before any work: a preflight.

    `file://` and `s3://`: the scheme and path parse, the folder or bucket is reachable with the
    credentials in the environment, and a tiny probe object is written, read back and deleted
    (`.dream-job-probe-<pid>`). `hf://`: the token is accepted (whoami), the repo is created (private)
    or found, and a probe file is committed and deleted (`hub.check_hub_destination`).

    Raises:
        ArtifactError: Unknown scheme, missing credentials, missing bucket, a read-only or
            non-folder path (exit 1), or an unreachable store (exit 3).
    """
    import os

    kind, target = _parse(destination)
    if kind == "hf":
        from dream_job.artifacts.hub import check_hub_destination

        check_hub_destination(target)
        return
    s3 = None
    if kind == "s3":
        from dream_job.artifacts.s3 import S3Settings as Settings

        # One quick attempt: a preflight reports a down store in seconds (exit 3), not after minutes.
        s3 = Settings(endpoint_url=s3_endpoint_url, max_attempts=2)
    store = _store(kind, target, destination, s3)
    store.check_access()
    store.probe_write(f".dream-job-probe-{os.getpid()}")


def state_store(destination: str, *, s3: S3Settings | None = None) -> TextStore:
    """Return where small state files kept across machines live at `destination` (`s3://`, `file://`, `hf://`).

    At `hf://user/repo` they go under the repo's `.dream-job/` folder (`hub.HubStateStore`).

    Raises:
        ArtifactError: The destination does not parse.
    """
    kind, target = _parse(destination)
    if kind == "hf":
        from dream_job.artifacts.hub import HubStateStore

        return HubStateStore(target)
    return _store(kind, target, destination, s3)


def _parse(destination: str) -> tuple[str, str]:
    """Split a destination into (`s3`|`hf`|`file`, target)."""
    parsed = urlparse(destination)
    if parsed.scheme == "s3" and parsed.netloc:
        return "s3", f"{parsed.netloc}/{parsed.path.strip('/')}"
    if parsed.scheme == "hf" and _HUB_REPO_RE.fullmatch(f"{parsed.netloc}{parsed.path}".rstrip("/")):
        return "hf", f"{parsed.netloc}{parsed.path}".rstrip("/")
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost") and parsed.path.startswith("/"):
        return "file", unquote(parsed.path)
    if parsed.scheme == "file" and parsed.netloc:
        # `file://runs/published/x`: a path relative to the working directory (local runs, the smoke job).
        return "file", str(Path(unquote(parsed.netloc + parsed.path)).absolute())
    raise ArtifactError(f"`{destination}` is not a destination I can use", hint=f"write it as {_FORMS}")


def _store(kind: str, target: str, url: str, s3: S3Settings | None) -> Store:
    if kind == "file":
        return FileStore(Path(target), url.rstrip("/"))
    from dream_job.artifacts.s3 import S3Store

    bucket, _, prefix = target.partition("/")
    return S3Store(bucket, prefix, s3)


def _checkpoint_store(destination: str, s3: S3Settings | None) -> Store:
    kind, target = _parse(destination)
    if kind == "hf":
        raise ArtifactError(
            f"checkpoints cannot be synced to `{destination}`: only `s3://` and `file://` are supported",
            hint="set `artifacts.destinations` to include an `s3://bucket/prefix` for checkpoints",
        )
    return _store(kind, target, destination, s3)

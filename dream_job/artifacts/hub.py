"""`hf://user/repo` destinations: publish an export to a private Hub model repo, and pull one.

Publishing writes `README.md` (the model card), `dream_job_run.json` and `MANIFEST.sha256` into
the folder, creates the repo (`private=True, exist_ok=True`), compares the repo's files with the
folder (LFS sha256, or the git blob id of small files) and uploads only those that differ, then
reads the repo's file list back and checks every file again. The upload is
`HfApi.upload_large_folder` where the installed huggingface_hub has it (1.x), else
`HfApi.upload_folder`, which in huggingface_hub 2.x is the resumable, multi-commit upload when
`hf_xet` is installed. The token comes only from `HF_TOKEN`; `HF_ENDPOINT` selects a mirror.

Retries are huggingface_hub's own (its `http_backoff` on 429 and 5xx, resumable downloads and
uploads); each operation here runs once, and `_call` only decides what its failure means: no
network or an overloaded Hub is transient (`ArtifactError`, exit 3: run it again, it uploads only
what differs), a refused token or a bad request is the user's to fix (exit 1).
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dream_job.artifacts.card import ModelCardInputs, write_model_card
from dream_job.artifacts.folder import (
    MANIFEST_NAME, RUN_MARKER_NAME, check_marker, marker_text, render_manifest, sha256_file,
)
from dream_job.artifacts.transfer import ProgressFn, PublishResult, digest_folder
from dream_job.errors import EXIT_TRANSIENT, ArtifactError
from dream_job.rundir import write_text_atomically

logger = logging.getLogger(__name__)
T = TypeVar("T")


def publish_to_hub(local: Path, repo_id: str, *, run_id: str, force: bool, card: ModelCardInputs | None,
                   progress: ProgressFn | None) -> PublishResult:
    """Publish `local` to the Hub repo `repo_id`; see `dream_job.artifacts.publish_folder`."""
    from huggingface_hub import HfApi

    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ArtifactError(
            f"`HF_TOKEN` is not set, so `hf://{repo_id}` cannot be written",
            hint="export a write token: `export HF_TOKEN=hf_...` (https://huggingface.co/settings/tokens)",
        )
    api = HfApi(endpoint=_endpoint(), token=token)
    where = f"hf://{repo_id}"
    _call(where, "creating the repository", lambda: api.create_repo(
        repo_id, private=True, exist_ok=True, repo_type="model"))
    existing = _call(where, f"reading `{RUN_MARKER_NAME}`",
                         lambda: _read_text(api, repo_id, RUN_MARKER_NAME, token))
    rewrite_marker = check_marker(existing, run_id=run_id, force=force, where=where)
    if card is not None or not (local / "README.md").is_file():
        inputs = card or ModelCardInputs(spec_yaml="")
        write_model_card(local, spec_yaml=inputs.spec_yaml, data_report=inputs.data_report,
                         eval_summary=inputs.eval_summary, loss_png=inputs.loss_png, repo_id=repo_id)
    # Keep the repo's own marker when it is this run's, so a re-publish does not re-upload it.
    marker = marker_text(run_id) if rewrite_marker or existing is None else existing
    write_text_atomically(local / RUN_MARKER_NAME, marker)
    digests = digest_folder(local)
    sha256 = {d.relpath: d.sha256 for d in digests}
    write_text_atomically(local / MANIFEST_NAME, render_manifest(sha256))
    names = [*sha256, MANIFEST_NAME, RUN_MARKER_NAME]
    stale = _call(where, "listing the repository", lambda: _stale_files(api, repo_id, local, names))
    if stale:
        patterns = [glob.escape(name) for name in stale]

        def upload() -> None:
            large: Callable[..., Any] | None = getattr(api, "upload_large_folder", None)
            if large is not None:  # huggingface_hub 1.x
                large(repo_id=repo_id, folder_path=local, repo_type="model", allow_patterns=patterns)
            else:  # 2.x: resumable multi-commit upload when hf_xet is installed
                api.upload_folder(repo_id=repo_id, folder_path=local, repo_type="model", allow_patterns=patterns,
                                  commit_message=f"dream-job: publish run {run_id}")
        _call(where, f"uploading {len(stale)} files", upload)
    left = _call(where, "listing the repository", lambda: _stale_files(api, repo_id, local, names))
    if left:
        raise ArtifactError(f"after the upload, {len(left)} files at `{where}` still differ from `{local}`",
                            caused_by=[f"`{name}`" for name in left[:20]],
                            hint="re-run the publish; it uploads only what differs", exit_code=EXIT_TRANSIENT)
    if progress is not None:
        for digest in digests:
            progress(digest.relpath, digest.size, digest.size)
    num_uploaded = len([d for d in digests if d.relpath in stale])
    logger.info("published %s to %s: %d files uploaded, %d already there", local, where, num_uploaded,
                len(digests) - num_uploaded)
    return PublishResult(where, len(digests), num_uploaded, len(digests) - num_uploaded,
                         sum(d.size for d in digests if d.relpath in stale), sha256)


PROBE_NAME = ".dream-job-probe"  # written and deleted again by the preflight


def check_hub_destination(repo_id: str) -> None:
    """Prove before any work that `HF_TOKEN` may publish to `repo_id`: whoami, create-or-check, a tiny write and delete.

    The repo is created private (as the publish would); the probe file is committed, then deleted
    in a second commit, so the repo ends as it was. Each call is one request of huggingface_hub
    (with its own retries on 429/5xx), a few seconds in all.

    Raises:
        ArtifactError: No token, a token the Hub refuses, no write access to the repo (exit 1), or
            the Hub did not answer (exit 3).
    """
    from huggingface_hub import HfApi

    where = f"hf://{repo_id}"
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ArtifactError(f"`HF_TOKEN` is not set, so `{where}` cannot be written",
                            hint="export a write token: `export HF_TOKEN=hf_...`")
    api = HfApi(endpoint=_endpoint(), token=token)
    _call(where, "checking the token (whoami)", lambda: api.whoami())
    _call(where, "creating the repository", lambda: api.create_repo(
        repo_id, private=True, exist_ok=True, repo_type="model"))
    _call(where, "writing a probe file", lambda: api.upload_file(
        path_or_fileobj=b"dream-job write probe\n", path_in_repo=PROBE_NAME, repo_id=repo_id, repo_type="model",
        commit_message="dream-job: preflight write probe"))
    _call(where, "deleting the probe file", lambda: api.delete_file(
        PROBE_NAME, repo_id=repo_id, repo_type="model", commit_message="dream-job: remove the preflight probe"))


def pull_from_hub(repo_id: str, dest: Path) -> None:
    """Download the repo into `dest` with `snapshot_download` (resumable; `HF_TOKEN` if set)."""
    from huggingface_hub import snapshot_download

    token = os.environ.get("HF_TOKEN") or False
    _call(f"hf://{repo_id}", "downloading", lambda: snapshot_download(
        repo_id, repo_type="model", local_dir=dest, token=token, endpoint=_endpoint()))


class HubStateStore:
    """Small state files of runs in a Hub model repo, under `.dream-job/` (`dream_job.launch.task`'s `task.json`).

    A job whose only destination is `hf://user/repo` keeps its run state there, so that a recovery
    on a new machine finds it. The repo is created private when missing, as a publish would.
    `pull` checks only the files of the manifest, so these files never fail it.
    """

    PREFIX = ".dream-job/"

    def __init__(self, repo_id: str) -> None:
        self.repo_id = repo_id
        self.url = f"hf://{repo_id}"

    def _api(self) -> Any:
        from huggingface_hub import HfApi

        token = os.environ.get("HF_TOKEN")
        if not token:
            raise ArtifactError(f"`HF_TOKEN` is not set, so the run state at `{self.url}` cannot be read or written",
                                hint="pass it to the task: `--secret HF_TOKEN`")
        return HfApi(endpoint=_endpoint(), token=token)

    def read_text(self, key: str) -> str | None:
        """Return `.dream-job/<key>`'s text, or None when it (or the repo) does not exist yet."""
        from huggingface_hub.errors import RepositoryNotFoundError

        api = self._api()

        def read() -> str | None:
            try:
                return _read_text(api, self.repo_id, self.PREFIX + key, api.token)
            except RepositoryNotFoundError:
                return None
        return _call(self.url, f"reading `{self.PREFIX + key}`", read)

    def write_text(self, key: str, text: str) -> None:
        """Commit `.dream-job/<key>` with `text` (creating the private repo when missing) and read it back."""
        api = self._api()
        _call(self.url, "creating the repository", lambda: api.create_repo(
            self.repo_id, private=True, exist_ok=True, repo_type="model"))
        _call(self.url, f"writing `{self.PREFIX + key}`", lambda: api.upload_file(
            path_or_fileobj=text.encode("utf-8"), path_in_repo=self.PREFIX + key, repo_id=self.repo_id,
            repo_type="model", commit_message=f"dream-job: {key}"))
        if self.read_text(key) != text:
            raise ArtifactError(f"`{self.PREFIX + key}` at `{self.url}` does not read back as written",
                                hint="run the same command again", exit_code=EXIT_TRANSIENT)


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def _read_text(api: Any, repo_id: str, filename: str, token: str) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    with tempfile.TemporaryDirectory() as cache:
        try:
            path = hf_hub_download(repo_id, filename, repo_type="model", token=token, cache_dir=cache,
                                   endpoint=api.endpoint)
        except (EntryNotFoundError, RevisionNotFoundError):  # no such file, or a repo without commits yet
            return None
        return Path(path).read_text(encoding="utf-8")


def _stale_files(api: Any, repo_id: str, local: Path, names: list[str]) -> list[str]:
    """Return the names whose repo copy is missing or differs (LFS sha256, or git blob sha1 of small files)."""
    info = api.model_info(repo_id, files_metadata=True)
    remote = {sibling.rfilename: sibling for sibling in info.siblings or []}
    stale = []
    for name in names:
        path, sibling = local / name, remote.get(name)
        if sibling is None or sibling.size != path.stat().st_size:
            stale.append(name)
        elif sibling.lfs is not None:
            if sibling.lfs.sha256 != sha256_file(path):
                stale.append(name)
        elif sibling.blob_id != _git_blob_id(path):
            stale.append(name)
    return stale


def _git_blob_id(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _call(where: str, what: str, fn: Callable[[], T]) -> T:
    """Run one Hub operation (huggingface_hub retries its own requests); turn its failure into `ArtifactError`.

    Raises:
        ArtifactError: Exit 3 when the network or the Hub failed (safe to re-run), else exit 1
            (offline mode, a refused token, a bad request). Other exceptions pass unchanged.
    """
    try:
        return fn()
    except Exception as exc:
        error = _classify(where, what, exc)
        if error is None:
            raise
        raise error from None


def _classify(where: str, what: str, exc: Exception) -> ArtifactError | None:
    """Return the `ArtifactError` that `exc` means for `what` at `where`, or None for an unknown failure."""
    from huggingface_hub.errors import (
        HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
    )

    try:
        from huggingface_hub.utils import httpx  # 2.x: its HTTP client `httpx2`, re-exported under this name
    except ImportError:  # 1.x: `httpx` itself
        import httpx

    cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if isinstance(exc, OfflineModeIsEnabled) or (
            isinstance(exc, LocalEntryNotFoundError) and isinstance(exc.__cause__, OfflineModeIsEnabled)):
        return ArtifactError(f"{what} at `{where}` needs the network, but `HF_HUB_OFFLINE` is set",
                             key="HF_HUB_OFFLINE", hint="unset `HF_HUB_OFFLINE` for this command")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", 0) or 0
        if status in (401, 403) or isinstance(exc, RepositoryNotFoundError):
            token_note = "with the token in `HF_TOKEN`" if os.environ.get("HF_TOKEN") else "without a token"
            return ArtifactError(
                f"the Hugging Face Hub `{_endpoint() or 'https://huggingface.co'}` refused {what} at `{where}` "
                f"{token_note} (HTTP {status})",
                hint="check the repo id, and that `HF_TOKEN` holds a token that may read (pull) or write "
                     "(publish) it",
            )
        if status < 500 and status != 429:
            return ArtifactError(f"{what} at `{where}` failed (HTTP {status})", caused_by=[cause])
    elif not isinstance(exc, (LocalEntryNotFoundError, httpx.TransportError, ConnectionError, TimeoutError)):
        return None  # not a failure of the Hub or the network: a bug, shown as one
    # A 429 or 5xx, no answer at all, or no local copy to fall back on: huggingface_hub has retried already.
    return ArtifactError(f"{what} at `{where}` failed: the Hub did not answer or is overloaded",
                         caused_by=[cause], hint="re-run the same command later; files already transferred are kept",
                         exit_code=EXIT_TRANSIENT)

"""`s3://bucket/prefix` destinations: boto3 with multipart transfers, retries and checksums.

Uploads carry the file's sha256 as object metadata (`x-amz-meta-sha256`) and ask the server for
S3's SHA256 checksum (per part for multipart uploads, checked by the server on arrival). After
each upload a HEAD reads both back; size, metadata and checksum (whole-object, or the composite
`base64(sha256(part digests))-N` of a multipart upload) must equal what was computed locally.
An object that already passes this check is skipped, so an interrupted publish resumes.

Retries are botocore's alone: its `adaptive` mode retries each request (connection errors, 5xx,
throttling) up to `S3Settings.max_attempts` times with exponential backoff and slows down when
throttled; s3transfer re-reads interrupted downloads. Each operation here runs once, and `_call`
only decides what a failure means: transient (`ArtifactError` with exit code 3: re-run, finished
files are skipped) or the user's to fix (exit 1: credentials, a missing bucket, a refused request).
Credentials come only from boto3's chain (environment, shared files, instance roles) and never
appear in messages or logs.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.exceptions as bce
from boto3.exceptions import RetriesExceededError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from s3transfer.utils import ChunksizeAdjuster

from dream_job.artifacts.folder import TMP_SUFFIX, FileDigest
from dream_job.artifacts.stores import BytesCallback
from dream_job.errors import EXIT_TRANSIENT, ArtifactError
from dream_job.rundir import FILE_MODE

logger = logging.getLogger(__name__)
T = TypeVar("T")
MIB = 1024 * 1024
_AUTH_CODES = {
    "403", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken",
    "InvalidClientTokenId", "TokenRefreshRequired", "AuthorizationHeaderMalformed",
}
_TRANSIENT_CODES = {"RequestTimeout", "RequestTimeTooSkewed", "SlowDown", "Throttling", "ThrottlingException",
                    "InternalError", "ServiceUnavailable", "OperationAborted", "BadDigest", "XAmzContentSHA256Mismatch"}
_TRANSIENT_ERRORS = (bce.EndpointConnectionError, bce.ConnectionError, bce.HTTPClientError,
                     bce.ResponseStreamingError, bce.IncompleteReadError, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3-compatible store and how hard to try.

    Attributes:
        endpoint_url: Endpoint of an S3-compatible store; None uses `AWS_ENDPOINT_URL_S3`,
            `AWS_ENDPOINT_URL`, then AWS itself.
        multipart_threshold_bytes: Files this large or larger go up in parts (default 64 MiB).
        multipart_chunksize_bytes: Part size (default 64 MiB; S3 needs at least 5 MiB).
        max_concurrency: Parallel part uploads per file.
        max_attempts: Attempts of each HTTP request, botocore's `adaptive` retry mode (its backoff
            waits up to 0.05 * 2**i s, at most 20 s, before retry i; 10 attempts ride out about
            half a minute of a store restarting); then the operation fails with exit code 3.
        checksum_algorithm: S3 checksum sent with uploads and read back by HEAD (`SHA256`); None for
            stores without S3 checksums (then only size and the sha256 metadata are read back, and
            botocore sends checksums only where S3 requires them).
    """

    endpoint_url: str | None = None
    multipart_threshold_bytes: int = 64 * MIB
    multipart_chunksize_bytes: int = 64 * MIB
    max_concurrency: int = 8
    max_attempts: int = 10
    checksum_algorithm: str | None = "SHA256"


class _VerifyMismatch(Exception):
    """What landed differs from what was sent (transient: a re-run uploads it again)."""


class S3Store:
    """One `s3://bucket/prefix` destination (see `stores.Store`)."""

    def __init__(self, bucket: str, prefix: str, settings: S3Settings | None = None) -> None:
        self.settings = settings or S3Settings()
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        endpoint = (self.settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                    or os.environ.get("AWS_ENDPOINT_URL") or None)
        self._session = boto3.session.Session()
        config = Config(
            retries={"mode": "adaptive", "max_attempts": self.settings.max_attempts},
            connect_timeout=10, read_timeout=120, signature_version="s3v4",
            # S3-compatible stores rarely serve virtual-hosted bucket names on a bare IP or host.
            s3={"addressing_style": "path"} if endpoint else None,
            request_checksum_calculation="when_supported" if self.settings.checksum_algorithm else "when_required",
        )
        algorithm = self.settings.checksum_algorithm
        self._checksum = {"ChecksumAlgorithm": algorithm} if algorithm else {}
        self.client = self._session.client("s3", endpoint_url=endpoint, config=config)
        self.endpoint = self.client.meta.endpoint_url
        self._transfer = TransferConfig(
            multipart_threshold=self.settings.multipart_threshold_bytes,
            multipart_chunksize=self.settings.multipart_chunksize_bytes,
            max_concurrency=self.settings.max_concurrency,
            preferred_transfer_client="classic",
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def check_access(self) -> None:
        """List one key under the prefix: fails clearly on bad credentials, a missing bucket or no endpoint."""
        self._call("listing", lambda: self.client.list_objects_v2(
            Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1))

    def abort_incomplete_uploads(self, prefix: str) -> int:
        """Abort every unfinished multipart upload under `prefix` (a killed or superseded upload's parts).

        S3 keeps (and bills) the parts of a multipart upload that was neither completed nor aborted,
        e.g. after the uploading process was killed; they never become objects.

        Returns:
            How many uploads were aborted.
        """
        def listing() -> list[tuple[str, str]]:
            found = []
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix))
            for page in pages:
                found += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", []) or []]
            return found

        uploads = self._call("listing unfinished multipart uploads", listing)
        for key, upload_id in uploads:
            def abort(key: str = key, upload_id: str = upload_id) -> None:
                try:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                except bce.ClientError as exc:
                    if _code(exc) not in ("NoSuchUpload", "404"):
                        raise
            self._call(f"aborting the unfinished upload of `{key}`", abort)
        if uploads:
            logger.info("aborted %d unfinished multipart upload(s) under %s/%s", len(uploads), self.url, prefix)
        return len(uploads)

    def probe_write(self, key: str) -> None:
        """PUT a tiny object, read it back, delete it: the bucket and prefix accept writes."""
        self.write_text(key, "dream-job write probe\n")
        self.delete(key)

    def part_size(self, size: int) -> int | None:
        """Return the part size boto3 will use for a file of `size` bytes (None: single PUT)."""
        if size < self.settings.multipart_threshold_bytes:
            return None
        return ChunksizeAdjuster().adjust_chunksize(self.settings.multipart_chunksize_bytes, size)

    def read_text(self, key: str) -> str | None:
        """Return an object's text, or None when it does not exist."""
        def get() -> str | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read().decode("utf-8")
            except bce.ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    return None
                raise
        return self._call(f"reading `{key}`", get)

    def write_text(self, key: str, text: str) -> None:
        """PUT a small object with its sha256, then GET it back and compare the bytes."""
        data = text.encode("utf-8")

        def put() -> None:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **self._checksum,
                                   Metadata={"sha256": hashlib.sha256(data).hexdigest()})
            back = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            if back != data:
                raise _VerifyMismatch(f"`{key}` read back different from what was written")
        self._call(f"writing `{key}`", put)

    def delete(self, key: str) -> None:
        """Delete an object (deleting a missing one is not an error in S3)."""
        self._call(f"deleting `{key}`", lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def list_keys(self, prefix: str) -> list[str]:
        """Return every key under `prefix`, relative to the store's prefix."""
        def listing() -> list[str]:
            keys = []
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            for page in pages:
                keys += [item["Key"] for item in page.get("Contents", [])]
            return keys
        root = self._key("")
        return sorted(k[len(root):] for k in self._call("listing", listing) if k.startswith(root))

    def is_current(self, key: str, digest: FileDigest) -> bool:
        """HEAD the object: True when size, sha256 metadata and S3 checksum all match `digest`."""
        def head() -> dict[str, Any] | None:
            try:
                return self.client.head_object(Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED")
            except bce.ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                    return None
                raise
        found = self._call(f"checking `{key}`", head)
        return found is not None and _mismatch(found, digest) is None

    def put_file(self, path: Path, key: str, digest: FileDigest, on_bytes: BytesCallback | None) -> None:
        """Upload `path` (multipart above the threshold) and verify it by HEAD; on failure abort its parts."""
        def upload() -> None:
            self.client.upload_file(
                str(path), self.bucket, self._key(key), Config=self._transfer, Callback=on_bytes,
                ExtraArgs={"Metadata": {"sha256": digest.sha256}, **self._checksum},
            )
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED")
            problem = _mismatch(head, digest)
            if problem:
                raise _VerifyMismatch(f"`{key}` after upload: {problem}")
        try:
            self._call(f"uploading `{key}`", upload)
        except BaseException:
            if digest.part_size is not None:  # leave no parts of this key behind (s3transfer aborts only its own)
                try:
                    self.abort_incomplete_uploads(key)
                except Exception as exc:  # the store is failing anyway; the next publish aborts them
                    logger.warning("could not abort unfinished uploads of `%s`: %s", key, _describe(exc))
            raise

    def get_file(self, key: str, path: Path) -> None:
        """Download to a temporary name next to `path`, then rename."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + TMP_SUFFIX)

        def download() -> None:
            self.client.download_file(self.bucket, self._key(key), str(tmp), Config=self._transfer)
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        self._call(f"downloading `{key}`", download)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one S3 operation (botocore retries its requests); turn its failure into an `ArtifactError`.

        Raises:
            ArtifactError: Exit 3 when the store or the network failed (safe to re-run), else exit 1.
                Other exceptions pass unchanged.
        """
        try:
            return fn()
        except Exception as exc:
            error = self._classify(what, exc)
            if error is None:
                raise
            raise error from None

    def _classify(self, what: str, exc: Exception) -> ArtifactError | None:
        """Return the `ArtifactError` that `exc` means for `what`, or None for an unknown failure."""
        if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return ArtifactError(
                f"no S3 credentials found for `{self.url}`", key="AWS_ACCESS_KEY_ID",
                hint="set `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (or `AWS_PROFILE`) in the environment",
            )
        client_error = _find_cause(exc, bce.ClientError)
        if client_error is not None:
            code, status = _code(client_error), client_error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _AUTH_CODES or status == 403:
                return self._credentials_error(client_error)
            if code == "NoSuchBucket":
                return ArtifactError(
                    f"bucket `{self.bucket}` does not exist at the S3 endpoint `{self.endpoint}`", value=self.url,
                    hint=f"create it first (`aws s3 mb s3://{self.bucket}`) or fix the destination",
                )
            if code not in _TRANSIENT_CODES and (status or 0) < 500:
                return ArtifactError(f"{what} at `{self.url}` (S3 endpoint `{self.endpoint}`) failed",
                                     caused_by=[_describe(client_error)])
        elif not (isinstance(exc, (_VerifyMismatch, RetriesExceededError, bce.ReadTimeoutError))
                  or _find_cause(exc, _TRANSIENT_ERRORS) is not None):
            return None  # not a failure of the store or the network: a bug, shown as one
        return ArtifactError(
            f"{what} at `{self.url}` (S3 endpoint `{self.endpoint}`) failed after {self.settings.max_attempts} "
            "attempts",
            caused_by=[_describe(exc)],
            hint="the store may be down or overloaded; re-run the same command later, finished files are skipped",
            exit_code=EXIT_TRANSIENT,
        )

    def _credentials_error(self, exc: bce.ClientError) -> ArtifactError:
        credentials = self._session.get_credentials()
        method = getattr(credentials, "method", None)
        source = ("`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`" if method == "env"
                  else f"boto3's `{method}` credential source")
        return ArtifactError(
            f"the S3 endpoint `{self.endpoint}` rejected the credentials in {source}",
            caused_by=[_describe(exc)],
            hint=f"check that the secret key belongs to the access key and may read and write `{self.url}`; "
                 "the endpoint comes from `artifacts.s3_endpoint_url` or `AWS_ENDPOINT_URL`",
        )


def _mismatch(head: dict[str, Any], digest: FileDigest) -> str | None:
    """Return why a HEAD response does not match `digest`, or None when it does."""
    if head.get("ContentLength") != digest.size:
        return f"size {head.get('ContentLength')} bytes, expected {digest.size}"
    stored = head.get("Metadata", {}).get("sha256")
    if stored != digest.sha256:
        return f"sha256 metadata `{stored}`, expected `{digest.sha256}`"
    checksum = head.get("ChecksumSHA256")
    if checksum is None:  # a store without S3 checksums: size and metadata are all we can read back
        return None
    if "-" in checksum:
        expected = digest.composite_sha256()
        if expected is None:
            return f"multipart checksum `{checksum}` for a file uploaded in one part here"
    else:
        expected = base64.b64encode(bytes.fromhex(digest.sha256)).decode()
    return None if checksum == expected else f"S3 checksum `{checksum}`, expected `{expected}`"


def _find_cause(exc: BaseException | None, kinds: Any) -> Any:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kinds):
            return exc
        last = getattr(exc, "last_exception", None)
        exc = last if isinstance(last, BaseException) else (exc.__cause__ or exc.__context__)
        seen += 1
    return None


def _code(exc: bce.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: BaseException) -> str:
    client_error = _find_cause(exc, bce.ClientError)
    if client_error is not None:
        error = client_error.response.get("Error", {})
        return f"`{error.get('Code')}`: {error.get('Message') or 'no message'}"
    return f"{type(exc).__name__}: {exc}"

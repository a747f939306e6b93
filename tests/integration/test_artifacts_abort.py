"""Unfinished S3 multipart uploads are aborted (issue 15), and every destination is probed before work.

Against SeaweedFS on loopback (`tests/s3server.py`). A publish killed with SIGKILL in the middle of
a multipart upload leaves its parts on the server (S3 keeps and bills them); the next publish of
that root aborts them, so after the successful re-publish no unfinished upload is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dream_job.artifacts import check_destination, publish_folder, sync_checkpoint
from dream_job.errors import ArtifactError
from tests.conftest import REPO
from tests.integration.test_artifacts import BIG, aws_env, make_checkpoint, make_export, new_bucket, settings

if TYPE_CHECKING:
    from tests.s3server import S3Server

pytest_plugins = ["tests.s3server"]
__all__ = ["aws_env"]  # a fixture used by name below

# A publish that SIGKILLs itself once the big file's first part is on the server.
KILLED_PUBLISH = """
import os, signal, sys
from pathlib import Path
from dream_job.artifacts import publish_folder
from dream_job.artifacts.s3 import S3Settings
export, destination, endpoint = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
mib = 1024 * 1024

def progress(rel, done, size):
    if rel.startswith("model-00001") and done >= 5 * mib and done < size:
        os.kill(os.getpid(), signal.SIGKILL)

publish_folder(export, destination, run_id="r", progress=progress,
               s3=S3Settings(endpoint_url=endpoint, multipart_threshold_bytes=5 * mib,
                             multipart_chunksize_bytes=5 * mib, max_concurrency=1, max_attempts=1))
"""


def unfinished(server: S3Server, bucket: str) -> list[str]:
    return [u["Key"] for u in server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) or []]


def test_a_publish_killed_mid_multipart_leaves_nothing_after_the_republish(
        s3_server: S3Server, aws_env: None, tmp_path: Path) -> None:
    bucket = new_bucket(s3_server)
    export = make_export(tmp_path / "export")
    destination = f"s3://{bucket}/runs/a"
    for _ in range(2):  # killed twice: the second publish aborts the first one's parts, then leaves its own
        killed = subprocess.run([sys.executable, "-c", KILLED_PUBLISH, str(export), destination, s3_server.endpoint_url],
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                                timeout=120)
        assert killed.returncode == -9, killed.stderr
    assert unfinished(s3_server, bucket) == [f"runs/a/{BIG}"]

    result = publish_folder(export, destination, run_id="r", s3=settings(s3_server))
    assert result.num_files == 7
    assert unfinished(s3_server, bucket) == []


def test_a_checkpoint_sync_aborts_the_unfinished_upload_of_its_step(
        s3_server: S3Server, aws_env: None, tmp_path: Path) -> None:
    bucket = new_bucket(s3_server)
    step = make_checkpoint(tmp_path / "checkpoints", 7, complete=True, seed=1)
    client = s3_server.client()
    key = f"ckpt/r/checkpoints/{step.name}/__0_0.distcp"
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)  # what a kill -9 mid-sync leaves
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * (5 * 2**20))
    assert unfinished(s3_server, bucket) == [key]
    sync_checkpoint(step, f"s3://{bucket}/ckpt", run_id="r", s3=settings(s3_server))
    assert unfinished(s3_server, bucket) == []
    assert client.head_object(Bucket=bucket, Key=f"ckpt/r/checkpoints/{step.name}/COMPLETE")["ContentLength"] > 0


def test_preflight_probes_write_access_and_leaves_nothing(s3_server: S3Server, aws_env: None, tmp_path: Path) -> None:
    bucket = new_bucket(s3_server)
    check_destination(f"s3://{bucket}/x", s3_endpoint_url=s3_server.endpoint_url)
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    with pytest.raises(ArtifactError) as missing:
        check_destination("s3://no-such-bucket-here/x", s3_endpoint_url=s3_server.endpoint_url)
    assert missing.value.message == (f"bucket `no-such-bucket-here` does not exist at the S3 endpoint "
                                     f"`{s3_server.endpoint_url}`")
    folder = tmp_path / "published"
    check_destination(f"file://{folder}")
    assert folder.is_dir() and list(folder.iterdir()) == []
    (tmp_path / "afile").write_text(json.dumps({}))
    with pytest.raises(ArtifactError) as a_file:
        check_destination(f"file://{tmp_path / 'afile'}")
    assert a_file.value.message == f"destination `file://{tmp_path / 'afile'}` is a file, not a folder"

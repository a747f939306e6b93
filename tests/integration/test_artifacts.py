"""Artifacts against real stores: SeaweedFS's S3 server on loopback (`tests/s3server.py`) and file://.

No boto3 mocks: uploads, multipart, checksums, credential checks and a server crash mid-upload
all happen against a real S3 implementation. botocore's `_make_api_call` is wrapped only to
count which S3 operations a call made.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import botocore.client
import pytest

from dream_job.artifacts import (
    MANIFEST_NAME, RUN_MARKER_NAME, fetch_latest_checkpoint, publish_folder, pull, sync_checkpoint,
)
from dream_job.artifacts.s3 import S3Settings
from dream_job.errors import EXIT_TRANSIENT, EXIT_USER, ArtifactError

if TYPE_CHECKING:
    from tests.s3server import S3Server

pytest_plugins = ["tests.s3server"]  # the `s3_server` fixture (a SeaweedFS S3 server per module)

MIB = 1024 * 1024
BIG = "model-00001-of-00002.safetensors"
# Sizes: a multipart file (12 MiB > 5 MiB threshold: 3 parts of 5, 5 and 2 MiB), one just under
# the threshold, small JSON, an empty file and a nested one.
SIZES = {BIG: 12 * MIB, "model-00002-of-00002.safetensors": 5 * MIB - 1, "empty.txt": 0,
         "tokenizer/vocab.json": 70_000}


def make_export(folder: Path, seed: int = 0) -> Path:
    """Write a fake Dream export: config, safetensors index, random shards of the sizes above."""
    rng = __import__("random").Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for rel, size in SIZES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(rng.randbytes(size))
    (folder / "config.json").write_text(json.dumps({"model_type": "Dream", "architectures": ["DreamModel"]}))
    (folder / "generation_config.json").write_text(json.dumps({"alg": "origin", "steps": 512}))
    index = {"metadata": {"total_size": 1}, "weight_map": {"model.embed_tokens.weight": BIG,
                                                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def files_of(folder: Path) -> dict[str, bytes]:
    """Map every file under `folder` (except the Hub client's `.cache/`) to its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".cache" not in p.relative_to(folder).parts}


def settings(server: S3Server, **overrides: Any) -> S3Settings:
    """Small parts and quick retries so multipart and give-up paths run in seconds."""
    values = {"endpoint_url": server.endpoint_url, "multipart_threshold_bytes": 5 * MIB,
              "multipart_chunksize_bytes": 5 * MIB, "max_concurrency": 2, "max_attempts": 2}
    return S3Settings(**{**values, **overrides})


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials only from the environment, never from the machine's `~/.aws`."""
    from tests.s3server import ACCESS_KEY, SECRET_KEY  # the server's test identity

    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record `(operation, key)` of every S3 request made through botocore."""
    calls: list[tuple[str, str]] = []
    lock = threading.Lock()
    original = botocore.client.BaseClient._make_api_call

    def spy(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        with lock:
            calls.append((operation_name, str(api_params.get("Key", ""))))
        return original(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", spy)
    return calls


WRITES = {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "DeleteObject", "CopyObject"}


def new_bucket(server: S3Server) -> str:
    return server.create_bucket(f"t-{uuid.uuid4().hex[:12]}")


def test_s3_publish_multipart_verifies_and_republish_skips_everything(
        s3_server: S3Server, aws_env: None, tmp_path: Path, s3_calls: list[tuple[str, str]]) -> None:
    bucket = new_bucket(s3_server)
    export = make_export(tmp_path / "export")
    result = publish_folder(export, f"s3://{bucket}/runs/a", run_id="run-a", s3=settings(s3_server))

    local = files_of(export)
    assert result.num_files == len(local) == 7 and result.num_uploaded == 7 and result.num_skipped == 0
    assert result.bytes_uploaded == sum(len(b) for b in local.values())
    assert [op for op, key in s3_calls if key.endswith(BIG) and op == "UploadPart"] == ["UploadPart"] * 3
    client = s3_server.client()
    for rel, data in local.items():
        head = client.head_object(Bucket=bucket, Key=f"runs/a/{rel}", ChecksumMode="ENABLED")
        assert head["ContentLength"] == len(data)
        assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert client.head_object(Bucket=bucket, Key=f"runs/a/{BIG}")["ETag"].endswith('-3"')
    manifest = client.get_object(Bucket=bucket, Key=f"runs/a/{MANIFEST_NAME}")["Body"].read().decode()
    assert manifest == "".join(f"{hashlib.sha256(d).hexdigest()}  {rel}\n" for rel, d in sorted(local.items()))
    marker = json.loads(client.get_object(Bucket=bucket, Key=f"runs/a/{RUN_MARKER_NAME}")["Body"].read())
    assert marker["run_id"] == "run-a"
    keys = [key for op, key in s3_calls if op in ("PutObject", "CompleteMultipartUpload")]
    assert keys[0].endswith(RUN_MARKER_NAME) and keys[-1].endswith(MANIFEST_NAME)

    s3_calls.clear()
    again = publish_folder(export, f"s3://{bucket}/runs/a", run_id="run-a", s3=settings(s3_server))
    assert (again.num_uploaded, again.num_skipped, again.bytes_uploaded) == (0, 7, 0)
    assert [call for call in s3_calls if call[0] in WRITES] == []


def test_s3_wrong_secret_is_rejected_with_one_clear_sentence(
        s3_server: S3Server, aws_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = new_bucket(s3_server)
    wrong = "wrong-secret-value-4242424242"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)  # the endpoint from the environment
    with pytest.raises(ArtifactError) as caught:
        publish_folder(make_export(tmp_path / "export"), f"s3://{bucket}/x", run_id="r",
                       s3=S3Settings(max_attempts=1))
    error = caught.value
    assert error.message == (f"the S3 endpoint `{s3_server.endpoint_url}` rejected the credentials in "
                             "`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`")
    assert error.exit_code == EXIT_USER
    assert error.caused_by == ["`SignatureDoesNotMatch`: The request signature we calculated does not match the "
                               "signature you provided. Check your key and signing method."]
    assert error.hint and "secret key belongs to the access key" in error.hint
    rendered = " ".join([error.message, *error.caused_by, error.hint])
    assert wrong not in rendered and s3_server.access_key not in rendered
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_s3_missing_bucket_and_missing_credentials_are_named(
        s3_server: S3Server, aws_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export = make_export(tmp_path / "export")
    with pytest.raises(ArtifactError) as missing_bucket:
        publish_folder(export, "s3://no-such-bucket-here/x", run_id="r", s3=settings(s3_server))
    assert missing_bucket.value.message == (f"bucket `no-such-bucket-here` does not exist at the S3 endpoint "
                                            f"`{s3_server.endpoint_url}`")
    assert missing_bucket.value.hint == "create it first (`aws s3 mb s3://no-such-bucket-here`) or fix the destination"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ArtifactError) as no_credentials:
        publish_folder(export, "s3://any-bucket/x", run_id="r", s3=settings(s3_server))
    assert no_credentials.value.message == "no S3 credentials found for `s3://any-bucket/x`"
    assert no_credentials.value.exit_code == EXIT_USER


def test_s3_other_run_is_refused_unless_forced(s3_server: S3Server, aws_env: None, tmp_path: Path) -> None:
    bucket = new_bucket(s3_server)
    destination = f"s3://{bucket}/shared"
    publish_folder(make_export(tmp_path / "a"), destination, run_id="run-a", s3=settings(s3_server))
    with pytest.raises(ArtifactError) as caught:
        publish_folder(make_export(tmp_path / "b", seed=1), destination, run_id="run-b", s3=settings(s3_server))
    assert caught.value.message == (f"`{destination}` already holds run `run-a` (its `dream_job_run.json`), "
                                    "refusing to publish run `run-b` over it")
    assert caught.value.hint == "publish to another destination, or pass `--force` to overwrite that run's files"
    forced = publish_folder(tmp_path / "b", destination, run_id="run-b", force=True, s3=settings(s3_server))
    # Same names, other bytes: the three random files go up again; the JSON files and empty.txt are equal.
    assert forced.num_uploaded == 3 and forced.num_skipped == 4
    marker = s3_server.client().get_object(Bucket=bucket, Key=f"shared/{RUN_MARKER_NAME}")["Body"].read()
    assert json.loads(marker)["run_id"] == "run-b"
    assert files_of(pull(destination, tmp_path / "pulled", s3=settings(s3_server))) == {
        **files_of(tmp_path / "b"), MANIFEST_NAME: (tmp_path / "pulled" / MANIFEST_NAME).read_bytes()}


def test_s3_pull_round_trip_and_tampered_object(s3_server: S3Server, aws_env: None, tmp_path: Path) -> None:
    bucket = new_bucket(s3_server)
    export = make_export(tmp_path / "export")
    publish_folder(export, f"s3://{bucket}/m", run_id="r1", s3=settings(s3_server))

    dest = pull(f"s3://{bucket}/m", tmp_path / "pulled", s3=settings(s3_server))
    pulled = files_of(dest)
    assert pulled.pop(MANIFEST_NAME).decode().count("\n") == 7
    assert pulled == files_of(export)

    s3_server.client().put_object(Bucket=bucket, Key="m/tokenizer/vocab.json", Body=b"tampered")
    with pytest.raises(ArtifactError) as caught:
        pull(f"s3://{bucket}/m", tmp_path / "pulled-again", s3=settings(s3_server))
    fresh = tmp_path / "pulled-again"
    assert caught.value.message == f"`{fresh}` does not match the `MANIFEST.sha256` of `s3://{bucket}/m` (1 of 7 files)"
    expected = hashlib.sha256(export.joinpath("tokenizer/vocab.json").read_bytes()).hexdigest()
    assert caught.value.caused_by == [f"`tokenizer/vocab.json` has sha256 `{hashlib.sha256(b'tampered').hexdigest()}`,"
                                      f" `MANIFEST.sha256` lists `{expected}`"]


def test_s3_server_killed_mid_upload_then_publish_resumes(aws_env: None, tmp_path: Path) -> None:
    from tests.s3server import S3Server

    server = S3Server(tmp_path / "seaweedfs").start()
    try:
        bucket = new_bucket(server)
        export = make_export(tmp_path / "export")
        killed = threading.Event()

        def kill_during_big_file(rel: str, done: int, size: int) -> None:
            if rel == BIG and 0 < done < size and not killed.is_set():
                killed.set()
                server.kill()

        with pytest.raises(ArtifactError) as caught:
            publish_folder(export, f"s3://{bucket}/p", run_id="r", progress=kill_during_big_file, s3=settings(server))
        assert killed.is_set()
        error = caught.value
        assert error.exit_code == EXIT_TRANSIENT
        assert error.message == (f"uploading `{BIG}` at `s3://{bucket}/p` (S3 endpoint `{server.endpoint_url}`) "
                                 "failed after 2 attempts")
        assert error.caused_by[-1].startswith("done so far: 3 of 7 files")
        assert "re-run" in (error.hint or "")

        server.start()  # same data folder and ports
        # A restarted store may answer 500 for a moment; botocore's retries absorb that, as in production.
        patient = settings(server, max_attempts=10)
        result = publish_folder(export, f"s3://{bucket}/p", run_id="r", s3=patient)
        # config.json, empty.txt and generation_config.json landed before the crash.
        assert result.num_skipped == 3 and result.num_uploaded == 4
        pulled = files_of(pull(f"s3://{bucket}/p", tmp_path / "pulled", s3=patient))
        pulled.pop(MANIFEST_NAME)
        assert pulled == files_of(export)
    finally:
        server.stop()


def make_checkpoint(root: Path, step: int, *, complete: bool, seed: int) -> Path:
    folder = root / f"step-{step:06d}"
    folder.mkdir(parents=True)
    rng = __import__("random").Random(seed)
    (folder / "__0_0.distcp").write_bytes(rng.randbytes(6 * MIB + step))
    (folder / ".metadata").write_bytes(rng.randbytes(2000))
    if complete:
        (folder / "COMPLETE").write_text(json.dumps({"step": step}))
    return folder


def test_s3_checkpoint_sync_and_fetch_latest_complete(
        s3_server: S3Server, aws_env: None, tmp_path: Path, s3_calls: list[tuple[str, str]]) -> None:
    bucket = new_bucket(s3_server)
    destination = f"s3://{bucket}/ckpt"
    local = tmp_path / "run" / "checkpoints"
    for step in (10, 20):
        sync_checkpoint(make_checkpoint(local, step, complete=True, seed=step), destination, run_id="r7",
                        s3=settings(s3_server))
    written = [key for op, key in s3_calls if op in ("PutObject", "CompleteMultipartUpload")]
    assert written[-1] == "ckpt/r7/checkpoints/step-000020/COMPLETE"
    assert written.index("ckpt/r7/checkpoints/step-000010/COMPLETE") == len(written) // 2 - 1
    torn = make_checkpoint(local, 30, complete=False, seed=30)
    with pytest.raises(ArtifactError, match="has no `COMPLETE` marker"):
        sync_checkpoint(torn, destination, run_id="r7", s3=settings(s3_server))
    # A newer remote step whose upload died before `COMPLETE`: files and manifest, no marker.
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="ckpt/r7/checkpoints/step-000040/__0_0.distcp", Body=b"partial")
    client.put_object(Bucket=bucket, Key=f"ckpt/r7/checkpoints/step-000040/{MANIFEST_NAME}", Body=b"")

    elsewhere = tmp_path / "new-machine" / "checkpoints"
    assert fetch_latest_checkpoint(destination, "r7", elsewhere, s3=settings(s3_server)) == 20
    assert sorted(p.name for p in elsewhere.iterdir()) == ["step-000020"]
    fetched = files_of(elsewhere / "step-000020")
    fetched.pop(MANIFEST_NAME)
    assert fetched == files_of(local / "step-000020")
    s3_calls.clear()
    assert fetch_latest_checkpoint(destination, "r7", elsewhere, s3=settings(s3_server)) == 20
    assert [op for op, _ in s3_calls if op == "GetObject"] == []
    assert fetch_latest_checkpoint(destination, "other-run", tmp_path / "none", s3=settings(s3_server)) is None


def test_file_round_trip_skip_and_tampered_file(tmp_path: Path) -> None:
    export = make_export(tmp_path / "export")
    destination = f"file://{tmp_path / 'published'}"
    first = publish_folder(export, destination, run_id="smoke")
    assert (first.num_uploaded, first.num_skipped) == (7, 0)
    assert (publish_folder(export, destination, run_id="smoke").num_skipped) == 7
    published = files_of(tmp_path / "published")
    assert json.loads(published.pop(RUN_MARKER_NAME))["run_id"] == "smoke"
    manifest = published.pop(MANIFEST_NAME).decode()
    assert published == files_of(export)
    assert manifest.splitlines()[1] == f"{hashlib.sha256(b'').hexdigest()}  empty.txt"

    dest = pull(destination, tmp_path / "pulled")
    pulled = files_of(dest)
    assert pulled.pop(MANIFEST_NAME).decode() == manifest and pulled == files_of(export)
    # A local file damaged after the pull is repaired by pulling again into the same folder.
    (dest / BIG).write_bytes(b"x")
    pull(destination, dest)
    assert (dest / BIG).read_bytes() == (export / BIG).read_bytes()

    (tmp_path / "published" / "config.json").write_text('{"model_type": "Dream", "tampered": true}')
    with pytest.raises(ArtifactError) as caught:
        pull(destination, tmp_path / "pulled-2")
    assert caught.value.message == (f"`{tmp_path / 'pulled-2'}` does not match the `MANIFEST.sha256` of "
                                    f"`{destination}` (1 of 7 files)")
    assert caught.value.caused_by[0].startswith("`config.json` has sha256 `")


def test_pull_rejects_a_folder_that_is_not_a_dream_export(tmp_path: Path) -> None:
    export = make_export(tmp_path / "export")
    (export / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    publish_folder(export, f"file://{tmp_path / 'pub'}", run_id="r")
    with pytest.raises(ArtifactError) as caught:
        pull(f"file://{tmp_path / 'pub'}", tmp_path / "pulled")
    assert caught.value.message == (f"`{tmp_path / 'pulled'}` is not a Dream export: `config.json` has "
                                    "`model_type` `qwen2`, expected `Dream`")


def test_bad_destinations_are_named(tmp_path: Path) -> None:
    for bad in ("s3:/nobucket", "hf://just-a-name", "file:relative/path", "gs://bucket/x"):
        with pytest.raises(ArtifactError) as caught:
            publish_folder(tmp_path, bad, run_id="r")
        assert caught.value.message == f"`{bad}` is not a destination I can use"


def test_relative_file_destination_starts_at_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a")
    monkeypatch.chdir(tmp_path)
    publish_folder(source, "file://out/here", run_id="r")
    assert (tmp_path / "out" / "here" / "a.txt").read_text() == "a"


def test_no_secret_reaches_files_or_logs(
        s3_server: S3Server, aws_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Publish and pull with secrets in the environment; grep every file and log line for them."""
    fake_hf = "hf_FAKEtokenForTests1234567890abcdef"
    monkeypatch.setenv("HF_TOKEN", fake_hf)
    secrets = [s3_server.secret_key, fake_hf]
    caplog.set_level(logging.DEBUG, logger="dream_job")
    caplog.set_level(logging.INFO)
    bucket = new_bucket(s3_server)
    export = make_export(tmp_path / "export")
    for destination in (f"s3://{bucket}/sec", f"file://{tmp_path / 'pub'}"):
        publish_folder(export, destination, run_id="r", s3=settings(s3_server))
        pull(destination, tmp_path / f"pulled-{destination[:2]}", s3=settings(s3_server))
    client = s3_server.client()
    remote = b"".join(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                      for item in client.list_objects_v2(Bucket=bucket)["Contents"])
    local = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "seaweedfs" not in str(p))
    logs = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    assert "published" in caplog.text
    for secret in secrets:
        assert secret.encode() not in remote and secret.encode() not in local and secret not in logs
    assert s3_server.access_key not in "".join(r.getMessage() for r in caplog.records if r.name.startswith("dream_job"))
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == s3_server.secret_key  # the secret was really in use


def test_pull_never_replaces_files_it_did_not_write(tmp_path: Path) -> None:
    """Issue 25: a folder of the user's own files, or another model pulled earlier, is refused unless `force`."""
    publish_folder(make_export(tmp_path / "a", seed=1), f"file://{tmp_path / 'pub-a'}", run_id="a")
    publish_folder(make_export(tmp_path / "b", seed=2), f"file://{tmp_path / 'pub-b'}", run_id="b")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("my own config")
    with pytest.raises(ArtifactError) as caught:
        pull(f"file://{tmp_path / 'pub-a'}", mine)
    assert caught.value.message == f"`{mine}` is not empty (1 files) and holds no earlier `dream-job pull`"
    assert files_of(mine) == {"config.json": b"my own config"}

    pulled = pull(f"file://{tmp_path / 'pub-a'}", tmp_path / "pulled")
    with pytest.raises(ArtifactError) as caught:
        pull(f"file://{tmp_path / 'pub-b'}", pulled)
    assert caught.value.message == (f"`{pulled}` holds another model pulled earlier (its `MANIFEST.sha256` differs "
                                    f"from `file://{tmp_path / 'pub-b'}`'s)")
    assert files_of(pulled)[BIG] == (tmp_path / "a" / BIG).read_bytes()
    pull(f"file://{tmp_path / 'pub-b'}", pulled, force=True)
    assert files_of(pulled)[BIG] == (tmp_path / "b" / BIG).read_bytes()
    pull(f"file://{tmp_path / 'pub-a'}", mine, force=True)
    assert "config.json" in files_of(mine) and files_of(mine)["config.json"] != b"my own config"


def test_a_pull_that_fails_its_checksums_leaves_the_destination_as_it_was(tmp_path: Path) -> None:
    publish_folder(make_export(tmp_path / "a", seed=1), f"file://{tmp_path / 'pub'}", run_id="a")
    pulled = pull(f"file://{tmp_path / 'pub'}", tmp_path / "pulled")
    before = files_of(pulled)
    (tmp_path / "pub" / BIG).write_bytes(b"tampered")  # the source changes after it was published
    fresh = tmp_path / "fresh"
    with pytest.raises(ArtifactError) as caught:
        pull(f"file://{tmp_path / 'pub'}", fresh)
    assert caught.value.message == (f"`{fresh}` does not match the `MANIFEST.sha256` of `file://{tmp_path / 'pub'}` "
                                    "(1 of 7 files)")
    assert not fresh.exists()  # nothing there looks complete
    # The earlier pull already holds the listed bytes: it is verified and kept, not replaced by the bad copy.
    assert pull(f"file://{tmp_path / 'pub'}", pulled) == pulled and files_of(pulled) == before
    # Once the source is right again, the next pull fetches only what failed and moves it into place.
    (tmp_path / "pub" / BIG).write_bytes((tmp_path / "a" / BIG).read_bytes())
    assert files_of(pull(f"file://{tmp_path / 'pub'}", fresh)) == before
    assert not (tmp_path / ".fresh.partial-pull").exists()

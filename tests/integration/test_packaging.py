"""The extras resolve as the README promises (needs PyPI; slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_launcher_extra_resolves_current_skypilot_next_to_huggingface_hub_1(tmp_path: Path) -> None:
    # SkyPilot pins click<8.2 and huggingface_hub 2.x needs click>=8.4.2: the launcher extra must
    # make pip pick huggingface_hub 1.x, not silently fall back to skypilot 0.9.2.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    report = tmp_path / "report.json"
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--dry-run", "--report", str(report), f"{REPO}[launcher]"],
        check=True,
        timeout=600,
    )
    chosen = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
              for item in json.loads(report.read_text())["install"]}
    assert "torch" not in chosen
    assert tuple(int(x) for x in chosen["skypilot"].split(".")[:2]) >= (0, 14)
    assert chosen["huggingface-hub"].startswith("1.")
    assert tuple(int(x) for x in chosen["click"].split(".")[:2]) < (8, 2)

"""A `num_nodes: 2` task on two local "nodes": sky.yaml's own run script, SkyPilot's node env, gloo (slow).

Each node is a process running the task's `run` script under bash with its own HOME (its own disk)
and the env SkyPilot exports on a 2-node cluster (`SKYPILOT_NODE_RANK`, `SKYPILOT_NODE_IPS` with
the head first, `SKYPILOT_NUM_NODES`, `SKYPILOT_NUM_GPUS_PER_NODE`), the head at 127.0.0.1. Both
carry the same job (the smoke job on the CPU, shortened). Training must run as one 2-process
gloo group across the nodes: each node's checkpoint folder holds its own rank's DCP shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dream_job.launch.payload import spec_text
from dream_job.spec import load_spec
from tests.conftest import REPO


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_two_nodes_train_as_one_gloo_group_from_the_run_script(tmp_path: Path) -> None:
    if Path("/opt/dream-job/image/entrypoint.sh").exists():
        pytest.skip("inside the dream-job image the script takes the image branch")
    destination = (tmp_path / "published").as_uri()
    text = spec_text(load_spec(REPO / "jobs" / "smoke.yaml", [
        "name=two-nodes", "train.epochs=1", "train.micro_batch_size=14", "train.save_every_steps=2",
        "eval.limit=4", "eval.batch_size=4", f"artifacts.destinations=[{destination}]"]))
    run_script = yaml.safe_load((REPO / "sky.yaml").read_text(encoding="utf-8"))["run"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DREAM_JOB_", "SKYPILOT_", "AWS_"))}
    common = {**base, "DREAM_JOB_SPEC": text, "DREAM_JOB_SPEC_SHA256": hashlib.sha256(text.encode()).hexdigest(),
              "DREAM_JOB_RUN_ID": "two-nodes-1", "BUDGET_HOURS": "1", "DREAM_JOB_USD_PER_HOUR": "1",
              "SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1",
              "SKYPILOT_NUM_GPUS_PER_NODE": "0", "DREAM_JOB_MASTER_PORT": str(_free_port())}
    nodes = []
    for rank in (0, 1):
        home = tmp_path / f"node-{rank}"
        (home / "dream-job-venv" / "bin").mkdir(parents=True)  # the venv `setup` makes: here, this project's
        (home / "dream-job-venv" / "bin" / "activate").write_text(
            f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
        log = open(tmp_path / f"node-{rank}.log", "w")  # noqa: SIM115  (closed below)
        nodes.append((home, log, subprocess.Popen(
            ["bash", "-c", run_script], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**common, "HOME": str(home), "SKYPILOT_NODE_RANK": str(rank)})))
    codes = []
    for _, log, process in nodes:
        try:
            codes.append(process.wait(timeout=1200))
        finally:
            log.close()
    logs = [(tmp_path / f"node-{rank}.log").read_text(errors="replace") for rank in (0, 1)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    runs = [home / "dream-job-runs" / "two-nodes-1" for home, _, _ in nodes]
    # torchrun was started with SkyPilot's node values on both nodes...
    assert "training on 2 node(s) x 0 GPU(s)" in logs[0] and "training on 2 node(s) x 0 GPU(s)" in logs[1]
    assert "--nnodes=2 --nproc_per_node=1 --node_rank=1 --master_addr=127.0.0.1" in logs[1]
    # ...and trained as one group of two ranks: each node's disk holds its own rank's DCP shards. (Rank 0
    # completes the checkpoint in its own folder only: resuming needs one run dir all nodes see, the mount.)
    shards = [{p.name for p in run.glob("checkpoints/*/*.distcp")} for run in runs]
    assert shards == [{"__0_0.distcp"}, {"__1_0.distcp"}], shards
    # Evaluation and publishing run once, on the head node.
    done = [{p.stem for p in run.glob("stages/*.done")} for run in runs]
    assert done[0] == {"prep", "train", "eval", "publish"}
    assert "eval" not in done[1] and "publish" not in done[1]
    record = json.loads((runs[0] / "stages" / "train.done").read_text())
    assert record["outcome"] == "done"
    assert (tmp_path / "published" / "config.json").is_file()
    # The start was counted once (by the head node), next to the run's results.
    assert json.loads((tmp_path / "published" / "two-nodes-1" / "task.json").read_text())["starts"] == 1

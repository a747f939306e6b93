"""Checkpoint cadence and cost (`budget.checkpoints`), and what it does to the flagship job's estimate.

Every expected number is worked out by hand in the comments, never with the module's own formulas.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from budget import estimate
from budget.checkpoints import mtbf_hours, plan_saves, staging_host_bytes, young_daly_interval_s
from budget.timing import calibration
from dream_job.errors import SpecError
from dream_job.launch.payload import priced_spec
from dream_job.spec import load_spec
from tests.conftest import REPO

FLAGSHIP = REPO / "jobs" / "dream-s1k.yaml"
P = 7_615_616_512  # Dream 7B parameters
TODAY = date(2026, 11, 24)


def test_young_daly_interval() -> None:
    # sqrt(2 x 30 s x 4 h): 2 x 30 x 14,400 = 864,000; sqrt = 929.516...
    assert young_daly_interval_s(30.0, 4 * 3600.0) == pytest.approx(929.5160030, rel=1e-9)
    # sqrt(2 x 121.85 x 50,676 h / 8): 2 x 121.85 x 22,804,200 = 5.5574e9; sqrt = 74,548 s (20.7 h)
    assert young_daly_interval_s(121.85, 50_676 / 8 * 3600) == pytest.approx(74_548.3, rel=1e-5)


def test_mtbf_per_cloud_spot_and_gpus() -> None:
    table = calibration().section("preemption")
    assert mtbf_hours(table, cloud="aws", spot=True, num_gpus=8) == 4.0
    assert mtbf_hours(table, cloud="runpod", spot=True, num_gpus=1) == 2.0
    assert mtbf_hours(table, cloud="somewhere", spot=True, num_gpus=1) == 4.0  # the `default` row
    # On-demand: 419 failures in 54 days on 16,384 GPUs = 50,676 GPU-hours; 8 GPUs fail 8x as often.
    assert mtbf_hours(table, cloud="aws", spot=False, num_gpus=8) == pytest.approx(6334.5)
    assert mtbf_hours(table, cloud="lambda", spot=False, num_gpus=1) == pytest.approx(50_676.0)


BASE = dict(ckpt_bytes=30e9, num_gpus=1, write_gb_per_s=1.0, stage_gb_per_s=10.0, export_s=20.0)


def test_fixed_interval_synchronous() -> None:
    # 177 steps every 20: saves at 20..160 (8) and the last step; each blocks for 30 GB / 1 GB/s.
    plan = plan_saves(steps=177, step_s=1.0, every=20, async_save=False, mtbf_s=1.0, **BASE)
    assert (plan.every_steps, plan.saves, plan.write_s, plan.blocking_s) == (20, 9, 30.0, 30.0)
    assert plan.exposed_s == pytest.approx(270.0)
    assert plan.mtbf_s is None
    # A step count that divides the run: the last periodic save is the last step's.
    assert plan_saves(steps=100, step_s=1.0, every=20, async_save=False, mtbf_s=1.0, **BASE).saves == 5


def test_auto_interval_synchronous() -> None:
    # C = 30 s, M = 1 h: sqrt(2 x 30 x 3,600) = 464.76 s = 46 steps of 10 s; 100 steps: saves at 46, 92, 100.
    plan = plan_saves(steps=100, step_s=10.0, every="auto", async_save=False, mtbf_s=3600.0, **BASE)
    assert (plan.every_steps, plan.saves, plan.mtbf_s) == (46, 3, 3600.0)
    assert plan.exposed_s == pytest.approx(90.0)


def test_auto_interval_asynchronous() -> None:
    # C = staging 30 GB / 10 GB/s = 3 s: sqrt(2 x 3 x 3,600) = 146.97 s (longer than the 30 s write) = 14 steps.
    # Saves at 14, 28, ..., 98 (7) and 100. Each periodic one blocks 3 s; the write (30 s) ends before the
    # next (140 s later); the last one starts 20 s after the one at 98, so it waits 10 s for that write,
    # stages (3 s) and its own write outlasts the 20 s export by 10 s: 7 x 3 + 10 + 3 + 10 = 44 s.
    plan = plan_saves(steps=100, step_s=10.0, every="auto", async_save=True, mtbf_s=3600.0, **BASE)
    assert (plan.every_steps, plan.saves, plan.blocking_s) == (14, 8, 3.0)
    assert plan.exposed_s == pytest.approx(44.0)


def test_async_saves_closer_than_a_write_wait_for_it() -> None:
    # Every 2 steps of 10 s over 10 steps: saves at 2, 4, 6, 8 and 10. The 30 s write outlasts the 20 s
    # between saves: the 2nd-4th wait 10 s each, the last one 30 - 20 = 10 s, then 30 - 20 s after the export.
    # 4 x 3 (staging) + 3 x 10 + 10 + 3 + 10 = 65 s.
    plan = plan_saves(steps=10, step_s=10.0, every=2, async_save=True, mtbf_s=1.0, **BASE)
    assert plan.saves == 5 and plan.exposed_s == pytest.approx(65.0)
    # An auto interval never starts saves faster than a write: C = 3 s, M = 10 s gives 7.7 s, raised to 30 s.
    assert plan_saves(steps=10, step_s=10.0, every="auto", async_save=True, mtbf_s=10.0, **BASE).every_steps == 3


def test_a_run_shorter_than_the_interval_saves_once() -> None:
    # sqrt(2 x 30 x 6,334.5 h) = 36,990 s, far beyond 177 steps of 1.2 s: the last step only.
    plan = plan_saves(steps=177, step_s=1.2, every="auto", async_save=False, mtbf_s=6334.5 * 3600, **BASE)
    assert (plan.every_steps, plan.saves) == (177, 1)
    assert plan.exposed_s == pytest.approx(30.0)


def test_staging_host_bytes() -> None:
    assert staging_host_bytes(12.0 * P, async_save=True) == 12.0 * P
    assert staging_host_bytes(12.0 * P, async_save=False) == 0.0


def test_save_interval_is_the_spec_s_and_the_launch_resolves_auto_in_the_carried_job() -> None:
    fixed = load_spec(FLAGSHIP, ["train.save_every_steps=20"])
    assert fixed.train.save_interval() == 20
    auto = load_spec(FLAGSHIP)
    assert auto.train.save_every_steps == "auto" and auto.artifacts.sync_every_steps == 20
    assert auto.train.save_interval() is None  # not launched for an offer: the last step only
    # The job the launch carries: the offer's interval, and (since `auto` uploads every save) the same upload cadence.
    priced = priced_spec(auto, 35)
    assert (priced.train.save_every_steps, priced.artifacts.sync_every_steps, priced.train.save_interval()) == (
        35, 35, 35)
    assert priced.model_dump(exclude={"train": {"save_every_steps"}, "artifacts": {"sync_every_steps"}}) == (
        auto.model_dump(exclude={"train": {"save_every_steps"}, "artifacts": {"sync_every_steps"}}))
    quiet = load_spec(FLAGSHIP, ["artifacts.sync_every_steps=null"])
    assert priced_spec(quiet, 35).artifacts.sync_every_steps is None  # a job that uploads no checkpoint still does not
    assert priced_spec(fixed, 35) == fixed and priced_spec(auto, 0) == auto  # nothing to resolve
    with pytest.raises(SpecError, match="must be a number of steps"):
        load_spec(FLAGSHIP, ["train.save_every_steps=0"])


def test_flagship_estimate_saves_once_in_the_background_under_35_yuan(tmp_path: Path) -> None:
    def run(*overrides: str):
        spec = load_spec(FLAGSHIP, list(overrides))
        return estimate(spec, data_report=None, catalog_dir=tmp_path / "no-catalog", now=TODAY).choice

    old, new = run("train.save_every_steps=20", "train.async_save=false"), run()
    # The same offer: 8x A100 `p4d.24xlarge` spot in us-east-1, budgeted at the zones' highest price $8.19/h.
    assert (new.gpu, new.count, new.instance_type, new.spot, new.method) == ("A100", 8, "p4d.24xlarge", True, "full")
    assert (old.gpu, old.count, old.instance_type, old.guard_usd_per_hour) == ("A100", 8, "p4d.24xlarge", 8.19)
    assert round(old.cost_cny, 2) == 52.27 and old.saves == 9

    # Before: 9 saves (every 20 of 177 steps) of 12 B/param (91.39 GB) at 0.75 GB/s, all blocking:
    # 9 x 91,387,398,144 / 0.75e9 = 1,096.65 s.
    assert old.overheads_hours["checkpoint writes"] * 3600 == pytest.approx(1096.6488, rel=1e-6)
    # After: spot on AWS, M = 4 h; a save blocks for its staging, 91.39 GB / 8 ranks / 5 GB/s = 2.285 s:
    # sqrt(2 x 2.285 x 14,400) = 256.5 s, longer than the 121.85 s write and than the whole training loop
    # (177 steps, ~0.06 h): the last step saves, once. Exposed: 2.285 s of staging + the write left after
    # the 15.23 GB export (20.31 s at 0.75 GB/s): 121.850 - 20.308 = 101.542 s; total 103.826 s.
    assert (new.saves, new.save_every_steps) == (1, 177)
    exposed = 12 * P / 8 / 5e9 + (12 * P - 2 * P) / 0.75e9
    assert exposed == pytest.approx(103.8262, rel=1e-6)
    assert new.overheads_hours["checkpoint writes"] * 3600 == pytest.approx(exposed, rel=1e-9)

    # Spot runs add 10 % of the whole run for restarts; the jobs controller (`m6i.xlarge`, $0.192/h) runs as long
    # as the job: (1,096.649 - 103.826) s x 1.1 = 1,092.105 s = 0.30336 h less, at (8.19 + 0.192) $/h x 7.1 CNY/USD.
    saved_h = (1096.6488 - 103.8262) * 1.1 / 3600
    assert old.hours - new.hours == pytest.approx(saved_h, rel=1e-5)
    assert old.cost_cny - new.cost_cny == pytest.approx(saved_h * (8.19 + 0.192) * 7.1, rel=1e-5)
    assert round(new.cost_cny, 2) == 34.22 and new.cost_cny <= 35.0
    # Round trip: the job the launch carries (`auto` resolved to 177 for this offer), with checkpoints uploaded to a
    # destination, costs what the `auto` job was priced at on the same offer.
    hub = ["artifacts.destinations=[s3://you/dream-s1k]", "budget.clouds=[aws]"]
    priced = run(*hub)
    assert (priced.instance_type, priced.spot, priced.save_every_steps) == ("p4d.24xlarge", True, 177)
    again = estimate(priced_spec(load_spec(FLAGSHIP, hub), priced.save_every_steps), data_report=None,
                     catalog_dir=tmp_path / "no-catalog", now=TODAY).choice
    assert (again.instance_type, again.spot, again.save_every_steps, again.saves) == ("p4d.24xlarge", True, 177, 1)
    assert again.cost_cny == pytest.approx(priced.cost_cny, rel=1e-12) and again.hours == priced.hours
    # Checkpoint share of the job's wall time: 103.8 s of 0.5710 h = 5.1 % (was 0.3046 of 0.8744 h = 35 %).
    assert exposed / (new.hours * 3600) == pytest.approx(0.0505, abs=5e-4)
    assert old.overheads_hours["checkpoint writes"] / old.hours == pytest.approx(0.348, abs=1e-3)
    # The staged copy is counted in host RAM: 91.39 GB = 85.1 GiB more than with synchronous saves.
    assert new.host_gib - run("train.async_save=false").host_gib == pytest.approx(12 * P / 2**30, rel=1e-9)


def test_an_auto_cadence_uploads_each_of_its_saves(tmp_path: Path) -> None:
    from budget.timing import overhead_seconds, save_plan
    from budget.shape import model_shape

    spec = load_spec(FLAGSHIP, ["artifacts.destinations=[s3://b/p]", "artifacts.sync_every_steps=20"])
    shape = model_shape(spec)
    # On-demand, 8 GPUs: one save (the last step), uploaded once: 91.39 GB at 50 MB/s = 1,827.75 s.
    saves = save_plan(spec, shape, method="full", steps=177, step_s=1.2, trainable=P, num_gpus=8, cloud="aws",
                      spot=False, cal=calibration())
    parts = overhead_seconds(spec, shape, method="full", steps=177, trainable=P, cal=calibration(), saves=saves)
    assert parts["upload 1 checkpoints at 50 MB/s"] == pytest.approx(1827.748, rel=1e-6)
    # AWS spot with M = 0.1 h (a made-up table): sqrt(2 x 2.285 x 360) = 40.56 s, raised to the 121.85 s write
    # = 101 steps of 1.2 s; saves at 101 and 177, both uploaded (sync_every_steps 20 does not divide 101).
    cal = calibration()
    table = {**cal.section("preemption"), "spot_hours": {"default": 0.1}}
    short = type(cal)({**cal.raw, "preemption": table})
    saves = save_plan(spec, shape, method="full", steps=177, step_s=1.2, trainable=P, num_gpus=8, cloud="aws",
                      spot=True, cal=short)
    assert (saves.every_steps, saves.saves) == (101, 2)
    parts = overhead_seconds(spec, shape, method="full", steps=177, trainable=P, cal=short, saves=saves)
    assert parts["upload 2 checkpoints at 50 MB/s"] == pytest.approx(2 * 1827.748, rel=1e-6)


def test_the_staged_copy_is_counted_in_host_ram(tmp_path: Path) -> None:
    # LoRA r16 on RunPod's 1x RTX 4090 (29 GB of host RAM): the staged checkpoint is the bf16 base (2 B/param)
    # plus the fp32 adapters, AdamW m and v (12 B each), held beside the training process from the first save.
    # Adapters: r x (in + out) per linear; per layer q 3584+3584, k 3584+512, v 3584+512, o 3584+3584,
    # gate and up 3584+18944, down 18944+3584 = 90,112; x 28 layers x r 16 = 40,370,176.
    # Since weights load one tensor at a time (issue 26) the box holds it: 4.0 + 14.8 GiB.
    def lora_4090(*overrides: str):
        spec = load_spec(REPO / "jobs" / "dream-s1k-lora-4090.yaml", list(overrides))
        result = estimate(spec, data_report=None, catalog_dir=tmp_path / "no-catalog", now=TODAY)
        return next(c for c in result.candidates if (c.method, c.instance_type) == ("lora", "1x_RTX4090_SECURE"))

    staged, plain = lora_4090("train.async_save=true"), lora_4090("train.async_save=false")
    adapters = 16 * 28 * 90_112
    assert adapters == 40_370_176
    assert staged.host_gib - plain.host_gib == pytest.approx((2 * P + 12 * adapters) / 2**30, rel=1e-9)
    assert plain.host_gib < staged.host_gib <= 29
    assert plain.fits and staged.fits

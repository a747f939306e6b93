"""`budget.estimate` on the real job files, with the shipped price snapshot and a fixed date."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from budget import Estimate, NoOfferError, estimate, load_data_report
from dream_job.errors import BudgetError, SpecError
from dream_job.spec import load_spec
from tests.conftest import REPO

REAL = REPO / "jobs" / "dream-s1k.yaml"
LORA_4090 = REPO / "jobs" / "dream-s1k-lora-4090.yaml"
TODAY = date(2026, 11, 24)
CHOICE_KEYS = {"gpu", "count", "method", "cloud", "spot", "peak_gib", "hours", "cost_cny", "usd_per_hour",
               "guard_usd_per_hour", "accelerator", "instance_type", "region", "zone", "priced_on"}


def run(job: Path, *overrides: str, report: dict | None = None, tmp_path: Path, expect_error: bool = False) -> Estimate:
    """The estimate (with `expect_error`, the one a `NoOfferError` carries)."""
    # A catalog folder that does not exist: the shipped snapshot, whatever this machine has in ~/.sky.
    spec = load_spec(job, list(overrides))
    if not expect_error:
        return estimate(spec, data_report=report, catalog_dir=tmp_path / "no-catalog", now=TODAY)
    with pytest.raises(NoOfferError) as raised:
        estimate(spec, data_report=report, catalog_dir=tmp_path / "no-catalog", now=TODAY)
    return raised.value.estimate


def find(result: Estimate, method: str, gpu: str, count: int):
    return [c for c in result.candidates if (c.method, c.gpu, c.count) == (method, gpu, count)]


def test_real_job_picks_a_fitting_offer_under_100_yuan(tmp_path: Path) -> None:
    result = run(REAL, tmp_path=tmp_path)
    choice = result.choice
    assert choice is not None and choice.fits and choice.within_budget
    assert choice.cost_cny < 100
    assert choice.method in ("full", "full_offload")  # fp32 AdamW: the job's recipe is kept
    assert choice.peak_gib <= choice.vram_gib
    # The choice is the cheapest accepted candidate (ties: faster).
    accepted = [c for c in result.candidates if c.accepted]
    assert min(accepted, key=lambda c: (round(c.cost_cny, 2), c.hours)) is choice
    assert result.tokens_are_estimate and "ESTIMATE" in result.tokens_source
    assert result.prices_date == date(2026, 11, 24)
    assert any("placeholder" in note for note in result.notes)
    assert result.stale_price_warning() is None  # 0 days old on the injected date


def test_real_job_rejects_full_fp32_adamw_on_one_a100_80gb_with_the_reason(tmp_path: Path) -> None:
    result = run(REAL, tmp_path=tmp_path)
    rejected = find(result, "full", "A100-80GB", 1)
    assert rejected and not any(c.fits for c in rejected)
    # 16 B/param of fp32 params, grads and AdamW m, v alone: 113.5 GiB > 80 GiB.
    assert "params+grads+optimizer 113.5" in rejected[0].reason
    assert rejected[0].reason.endswith("A100-80GB has 80.0 GiB")
    line = next(line for line in result.rejected if line.startswith("full on 1x A100-80GB: "))
    assert "needs" in line


def test_lora_on_one_4090_fits_at_2048_with_the_jobs_rank_16_but_not_with_rank_64(tmp_path: Path) -> None:
    # H100 probe (2026-11-24): LoRA r64 at 2048 allocated 21.2-22.2 GiB and reserved up to 24.2 GiB
    # in forward/backward, before the CUDA context: over a 24 GiB card. Rank 16 saves ~1.8 GiB.
    r16 = run(LORA_4090, tmp_path=tmp_path)
    one = find(r16, "lora", "RTX4090", 1)
    assert one and all(c.peak_gib <= c.vram_gib for c in one)
    assert r16.choice is not None and r16.choice.gpu == "RTX4090"
    r64 = run(LORA_4090, "train.lora.rank=64", "train.lora.alpha=128", tmp_path=tmp_path)
    one = find(r64, "lora", "RTX4090", 1)
    assert one and not any(c.fits for c in one)
    assert one[0].reason.startswith("needs ") and one[0].reason.endswith("RTX4090 has 24.0 GiB")
    assert r64.choice is not None and r64.choice.count > 1  # the 4090 job needs several cards as written


def test_a_5_yuan_budget_fails_with_the_minimum_that_launches_shutdown_grace_included(tmp_path: Path) -> None:
    with pytest.raises(NoOfferError) as raised:
        run(REAL, "budget.max_cost_yuan=5", tmp_path=tmp_path)
    error = raised.value
    assert isinstance(error, BudgetError) and error.exit_code == 1
    # The AWS spot p4d.24xlarge runs 0.571 h (the time model) at the guard's $8.19/h (dearest zone of us-east-1)
    # plus the jobs controller's $0.192/h: $8.382/h = ¥59.5122/h at 7.10. Its cost is ¥34.22, but its launch needs
    # `BUDGET_HOURS` >= 0.58 h: 34.8 -> 35 min + the 15 min grace = 50 min = ¥49.59 -> ¥50. (RunPod's 2x A100 at
    # ¥32.74 is cheaper but cannot run this job: no bucket mount and no destination.)
    assert error.message == (
        "no offer runs `dream-s1k` within `budget.max_cost_yuan` ¥5: the cheapest that fits needs ¥50 (8x A100, "
        "full, aws spot, 0.57 h for ¥34.22, with `BUDGET_HOURS` ending 15 min before the budget is spent)")
    assert error.min_budget_cny == 50
    assert error.hint == "raise the budget to at least ¥50: `--set budget.max_cost_yuan=50`"
    assert error.estimate.choice is None
    assert error.estimate.to_json()["choice"] is None
    # The suggested budget really launches: the choice is that offer, inside the cap the launch sets.
    choice = run(REAL, "budget.max_cost_yuan=50", tmp_path=tmp_path).choice
    assert choice is not None and (choice.instance_type, choice.spot, round(choice.hours, 3)) == ("p4d.24xlarge", True,
                                                                                                  0.571)
    assert choice.budget_hours == 0.58  # ¥50 / ¥59.5122/h = 50.41 -> 50 min, less 15: 35 min = 0.583 h


def test_an_offer_whose_hours_outlast_the_launchs_cap_is_rejected_though_it_costs_less(tmp_path: Path) -> None:
    # ¥49 / ¥59.5122/h (as above) = 49.40 -> 49 min, less the 15 min grace: 34 min = 0.567 -> `BUDGET_HOURS` 0.56 h,
    # shorter than the 0.571 h run, though the run costs ¥34.22 (the rule before issue 24's fix accepted it).
    short = run(REAL, "budget.clouds=[aws]", "budget.max_cost_yuan=49", tmp_path=tmp_path, expect_error=True)
    (p4d,) = [c for c in short.candidates if (c.instance_type, c.spot, c.method) == ("p4d.24xlarge", True, "full")]
    assert round(p4d.cost_cny, 2) == 34.22 and not p4d.within_budget and not p4d.accepted
    assert (p4d.budget_hours, p4d.min_budget_cny) == (0.56, 50)
    assert p4d.reason == ("needs 0.57 h but ¥49 buys 49 min at $8.382/h, so the launch stops it at `BUDGET_HOURS` "
                          "0.56 h (the 15 min shutdown grace before the budget is spent); ¥50 would fit")
    # Over the budget itself, the reason names the budget that fits too.
    over = run(REAL, "budget.clouds=[aws]", "budget.max_cost_yuan=30", tmp_path=tmp_path, expect_error=True)
    (p4d,) = [c for c in over.candidates if (c.instance_type, c.spot, c.method) == ("p4d.24xlarge", True, "full")]
    assert p4d.reason == "costs ¥34.22, over the ¥30 budget; ¥50 runs its 0.57 h with the 15 min shutdown grace"


@pytest.mark.parametrize("value", ["0", "-5"])
def test_zero_or_negative_budget_is_one_clear_sentence(value: str) -> None:
    with pytest.raises(SpecError) as raised:
        load_spec(REAL, [f"budget.max_cost_yuan={value}"])
    assert raised.value.message == (
        f"`budget.max_cost_yuan` in `--set budget.max_cost_yuan={value}` must be greater than 0, got `{value}`"
    )


def test_unknown_gpu_name(tmp_path: Path) -> None:
    with pytest.raises(BudgetError) as raised:
        run(REAL, "budget.gpus=[B300]", tmp_path=tmp_path)
    assert raised.value.message == "unknown GPU `B300` in `budget.gpus`"


def report(max_length: int, rows: int = 900, mean: float = 2000.0) -> dict:
    return {"max_length": max_length, "rows_kept": rows, "rows_holdout": 50,
            "train_tokens": {"sum": int(rows * mean), "mean": mean},
            "tokens": {"prompt": {"mean": 180.0}, "total": {"mean": 9000.0}}}


def test_data_report_from_another_max_length_is_one_clear_sentence(tmp_path: Path) -> None:
    with pytest.raises(BudgetError) as raised:
        run(REAL, report=report(4096), tmp_path=tmp_path)
    assert raised.value.message == "the data report was made with `data.max_length` 4096, but the job sets 2048"
    assert "--set data.max_length=4096" in raised.value.hint


def test_data_report_replaces_the_profile(tmp_path: Path) -> None:
    path = tmp_path / "data_report.json"
    path.write_text(json.dumps(report(2048, rows=800, mean=1500.0)))
    result = run(REAL, report=load_data_report(path), tmp_path=tmp_path)
    assert result.tokens_source == "data report" and not result.tokens_are_estimate
    assert result.rows == 800 and result.tokens_per_epoch == 800 * 1500
    assert result.steps == 800 // 16 * 3
    with pytest.raises(BudgetError, match="does not exist"):
        load_data_report(tmp_path / "missing.json")


def test_no_report_for_a_dataset_without_a_profile(tmp_path: Path) -> None:
    with pytest.raises(BudgetError) as raised:
        run(REPO / "jobs" / "smoke.yaml", tmp_path=tmp_path)
    assert raised.value.message == ("no data report for `data.dataset` `jobs/assets/smoke/one-digit-carry.jsonl`, "
                                    "and the shipped length profile covers `simplescaling/s1K-1.1` only")


def test_json_is_stable_and_restricted_to_the_job_clouds(tmp_path: Path) -> None:
    result = run(REAL, "budget.clouds=[runpod]", 'artifacts.destinations=["hf://you/x"]', "budget.max_cost_yuan=1000",
                 tmp_path=tmp_path)
    data = json.loads(json.dumps(result.to_json()))
    assert {"choice", "candidates", "budget_cny", "prices_source", "prices_date", "cny_per_usd_source"} <= set(data)
    assert set(data["choice"]) == CHOICE_KEYS
    assert data["prices_date"] == "2026-11-24" and data["budget_cny"] == 1000
    assert data["cny_per_usd_source"] == "dream-job's planning default of 2026-11-24 (not a market quote)"
    for candidate in data["candidates"]:
        assert CHOICE_KEYS | {"fits", "within_budget", "reason", "overheads_hours"} <= set(candidate)
        assert candidate["cloud"] == "runpod"
    on_demand = run(REAL, "budget.use_spot=false", "budget.managed_job=false", "budget.max_cost_yuan=1000",
                    tmp_path=tmp_path)
    assert not any(c.spot for c in on_demand.candidates)


def test_prices_older_than_the_limit_are_flagged_not_refused(tmp_path: Path) -> None:
    spec = load_spec(REAL, [])
    later = estimate(spec, data_report=None, catalog_dir=tmp_path / "no-catalog", now=date(2027, 2, 3))
    assert later.choice is not None
    assert later.stale_price_warning() == (
        "prices are 71 days old (2026-11-24), older than `budget.max_catalog_age_days` (14): refresh them before "
        "launching")
    assert later.to_json()["stale_price_warning"] == later.stale_price_warning()


def test_offers_without_a_bucket_mount_need_destinations(tmp_path: Path) -> None:
    # jobs/dream-s1k-full-length.yaml has no destinations: Vast and RunPod cannot keep its results.
    full_length = REPO / "jobs" / "dream-s1k-full-length.yaml"
    result = run(full_length, tmp_path=tmp_path)
    assert result.choice.cloud not in ("runpod", "vast", "shadeform")
    vast = [c for c in result.candidates if c.cloud == "vast" and c.fits and c.within_budget and not c.recipe_change]
    assert vast and all(not c.accepted for c in vast)
    assert vast[0].reason == (
        "`vast` cannot mount the run-dir bucket (no FUSE) and `artifacts.destinations` is empty, so the results "
        "would be lost with the machine; to use it add one: "
        "`--set 'artifacts.destinations=[\"hf://you/dream-s1k-full-length\"]'`")
    with_hub = run(full_length, 'artifacts.destinations=["hf://you/x"]', tmp_path=tmp_path)
    assert with_hub.choice.cloud == "vast" and with_hub.choice.instance_type == "1x-A100_PCIE-32-65536"
    assert with_hub.choice.gpu == "A100-80GB" and with_hub.choice.vram_gib == 80.0


def test_overheads_are_broken_down_and_add_up(tmp_path: Path) -> None:
    result = run(REAL, 'artifacts.destinations=["hf://you/x"]', "artifacts.sync_every_steps=10",
                 "budget.max_cost_yuan=1000", tmp_path=tmp_path)
    for c in result.candidates:
        assert sum(c.overheads_hours.values()) == pytest.approx(c.overhead_hours, abs=1e-9)
    names = set(result.choice.overheads_hours)
    assert {"provision", "image pull at 100 MB/s", "model download at 100 MB/s", "data prep", "export write",
            "upload export at 50 MB/s"} <= names
    assert any(name.startswith("upload ") and name.endswith(" checkpoints at 50 MB/s") for name in names)


def test_recipe_changing_methods_are_alternatives_unless_allowed(tmp_path: Path) -> None:
    result = run(REAL, tmp_path=tmp_path)
    assert any(line.startswith("lora on any GPU: changes the recipe to LoRA") for line in result.rejected)
    allowed = run(REAL, "budget.allow_recipe_change=true", tmp_path=tmp_path)
    assert allowed.choice is not None and allowed.choice.cost_cny <= result.choice.cost_cny


def test_rich_tables_render(tmp_path: Path) -> None:
    from rich.console import Console

    from dream_job.progress import estimate_tables

    console = Console(record=True, width=240)
    for table in estimate_tables(run(REAL, tmp_path=tmp_path), full=True):
        console.print(table)
    text = console.export_text()
    assert "◀ choice" in text and "overheads" in text and "full on 1x A100-80GB" in text


def test_budget_imports_no_torch_and_nothing_of_the_container_side() -> None:
    code = ("import sys, budget, budget.estimate, budget.catalog, budget.memory, budget.timing, budget.tokens; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('dream_job.train', 'dream_job.model', "
            "'dream_job.data', 'dream_job.diffusion'))]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)

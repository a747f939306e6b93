"""The cost preflight: every (GPU x count x method x cloud x spot) candidate, and the choice.

`estimate(spec, data_report=...)` prices each offer of the catalog (or the shipped snapshot)
for the spec's own `train.method` and the other methods, with the memory model
(`budget.memory`) and the time model (`budget.timing`), and chooses the cheapest candidate that
fits and stays within `budget.max_cost_yuan` (ties: the faster): within means it costs no more and its
hours fit the `BUDGET_HOURS` cap the launch sets from that budget at the same prices, which ends the
shutdown grace before the budget is spent (`budget.caps`). Methods that change the
training recipe (8-bit AdamW or LoRA instead of fp32 AdamW, and back) are candidates only with
`budget.allow_recipe_change`; otherwise they are listed as alternatives. Nothing here prints.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

from budget.caps import GRACE_MIN, fitting_budget_cny, run_cap
from budget.catalog import NO_FUSE_CLOUDS, Offer, guard_usd_per_hour, load_prices
from budget.checkpoints import checkpoint_bytes, mtbf_hours, staging_host_bytes
from budget.controller import IDLE_HOURS, ControllerOffer, controller_offer
from budget.gpus import GpuSpec, gpu_table, resolve_gpu
from budget.memory import MemoryEstimate, estimate_memory
from budget.result import Candidate, Estimate, NoOfferError
from budget.shape import ModelShape, model_shape
from budget.timing import Calibration, TimeEstimate, calibration, estimate_time
from budget.tokens import Workload, workload
from dream_job.errors import BudgetError
from dream_job.spec import JobSpec

METHODS = ("full", "full_8bit", "full_offload", "lora")
# Methods with the same recipe train the same maths: offload only moves fp32 AdamW to the CPU.
RECIPE = {"full": "fp32 AdamW", "full_offload": "fp32 AdamW", "full_8bit": "8-bit AdamW", "lora": "LoRA"}
# What to train with instead when a method does not fit the GPU, in order: the same recipe first,
# then 8-bit AdamW, then LoRA. The one fallback order: the container preflight's
# `train.on_memory_mismatch: switch` and the trainer's out-of-memory hint both read it.
FALLBACK_METHODS = {"full": ("full_offload", "full_8bit", "lora"), "full_offload": ("full_8bit", "lora"),
                    "full_8bit": ("lora",), "lora": ()}


def fallback_methods(method: str) -> tuple[str, ...]:
    """Return the methods to try, in order, when `method` does not fit (empty for `lora`)."""
    return FALLBACK_METHODS[method]


def _memory(spec: JobSpec, shape: ModelShape, method: str, count: int, work: Workload,
            cal: Calibration) -> MemoryEstimate:
    train, sampler = spec.train, spec.eval.sampler
    prompt = max((s.prompt_tokens for s in work.suites), default=0.0)
    context = sampler.padded_prompt_length(round(prompt)) + sampler.gen_length
    mem = estimate_memory(
        shape, method=method, num_gpus=count, micro_batch_size=train.micro_batch_size,
        max_length=spec.data.max_length, checkpointed_layers=train.num_checkpointed_layers(shape.num_layers),
        fsdp=spec.wraps_in_fsdp(method, count), compiled=train.compile,
        accumulation_steps=max(1, train.global_batch_size // (train.micro_batch_size * count)),
        lora_rank=train.lora.rank, lora_targets=list(train.lora.targets), lora_dropout=train.lora.dropout,
        eval_batch_size=spec.eval.batch_size,
        eval_context=context if work.suites else 0,
        eval_logit_rows=sampler.logit_rows(spec.eval.batch_size, context),
        constants=cal.memory_constants(), init=spec.model.init, prep_processes=spec.data.num_proc,
    )
    # `train.async_save` keeps a staged copy of the checkpoint in host RAM from the first save on (its
    # buffers are reused): on top of `budget.memory`'s figure for every stage after the weights load.
    trainable = shape.lora_params(train.lora.rank, list(train.lora.targets)) if method == "lora" else shape.num_params
    ckpt = checkpoint_bytes(shape, method, trainable, cal.section("memory")["adam8bit_bytes_per_param"])
    staged_gib = staging_host_bytes(ckpt, async_save=train.async_save) / 2**30
    stages = {stage: gib + (staged_gib if stage not in ("prep", "weight load") else 0.0)
              for stage, gib in mem.host_stages_gib.items()}
    return replace(mem, host_stages_gib=stages, host_gib=max(stages.values()))


def plan_memory(spec: JobSpec, method: str, num_gpus: int,
                data_report: dict[str, Any] | None = None) -> MemoryEstimate:
    """Return the memory model's per-GPU peak of `spec` trained with `method` on `num_gpus` GPUs.

    Used by the container's preflight to check the plan against the GPUs it actually got.
    """
    cal = calibration()
    return _memory(spec, model_shape(spec), method, num_gpus, workload(spec, data_report), cal)


def _memory_reason(spec: JobSpec, mem: MemoryEstimate, gpu: GpuSpec) -> str:
    terms = mem.breakdown_gib
    has = f"{gpu.name} has {gpu.vram_gib:.1f} GiB"
    if mem.peak_phase == "eval":
        return (f"needs {mem.peak_gib:.1f} GiB per GPU while evaluating (bf16 weights + logits of "
                f"`eval.batch_size` {spec.eval.batch_size}), {has}; lower `eval.batch_size`")
    states = sum(v for k, v in terms.items() if k.startswith(("params", "grads", "AdamW", "base", "adapters")))
    parts = [f"params+grads+optimizer {states:.1f}"]
    if (acc := terms.get("no-sync accumulated grads fp32 (unsharded)")) is not None:
        parts.append(f"no-sync accumulated fp32 grads {acc:.1f}")
    parts.append(f"activations+loss {sum(v for k, v in terms.items() if k.startswith(('activations', 'loss'))):.1f}")
    phase = {"train": "forward/backward", "step": "optimizer step", "save": "checkpoint/export"}[mem.peak_phase]
    return f"needs {mem.peak_gib:.1f} GiB per GPU at its {phase} peak ({', '.join(parts)} GiB), {has}"


def _candidate(spec: JobSpec, offer: Offer, method: str, mem: MemoryEstimate, time: TimeEstimate,
               cal: Calibration, controller: ControllerOffer | None) -> Candidate:
    budget, train = spec.budget, spec.train
    gpu = gpu_table()[offer.gpu]
    host_ram, host_known = offer.host_mem_gib, offer.host_mem_gib is not None
    if host_ram is None:
        host_ram = offer.count * gpu.vram_gib * cal.memory_constants().unknown_host_ram_per_vram
    hours = time.total_s / 3600
    # The jobs controller runs as long as the job, then idles 10 minutes before it autostops.
    controller_usd = (hours + IDLE_HOURS) * controller.usd_per_hour if controller is not None else 0.0
    guard_usd = guard_usd_per_hour(offer, managed=budget.managed_job)
    usd = hours * guard_usd + controller_usd
    controller_cny = controller_usd * budget.cny_per_usd
    cost = usd * budget.cny_per_usd
    # The launch caps the run at what the budget buys at this rate less the shutdown grace (`budget.caps`).
    run_usd = guard_usd + (controller.usd_per_hour if controller is not None else 0.0)
    cap = run_cap(budget.max_cost_yuan, cny_per_usd=budget.cny_per_usd, usd_per_hour=run_usd)
    min_budget = fitting_budget_cny(hours, cny_per_usd=budget.cny_per_usd, usd_per_hour=run_usd)
    within_budget = cost <= budget.max_cost_yuan and cap.fits(hours)
    fits_gpu = mem.peak_gib <= gpu.vram_gib
    fits_host = mem.host_gib <= host_ram
    per_round = train.micro_batch_size * offer.count
    reason = ""
    if train.global_batch_size % per_round:
        reason = (f"`train.global_batch_size` {train.global_batch_size} is not a multiple of "
                  f"`train.micro_batch_size` {train.micro_batch_size} x {offer.count} GPUs")
    elif not fits_gpu:
        reason = _memory_reason(spec, mem, gpu)
    elif not fits_host:
        has = f"has {host_ram:.0f} GiB" if host_known else f"does not list its RAM (assumed {host_ram:.0f} GiB)"
        offloaded = ", the offloaded fp32 weights and AdamW states" if method == "full_offload" else ""
        staged = ", the staged checkpoint of `train.async_save`" if train.async_save else ""
        reason = (f"needs {mem.host_gib:.1f} GiB of host RAM at its peak, the {mem.host_peak_stage} "
                  f"({offer.count} training process(es){offloaded}{staged}), `{offer.instance_type}` {has}"
                  f"{'; `--set train.async_save=false` needs no staged copy' if train.async_save else ''}")
    elif cost > budget.max_cost_yuan:
        reason = (f"costs ¥{cost:.2f}, over the ¥{budget.max_cost_yuan:g} budget; ¥{min_budget} runs its "
                  f"{hours:.2f} h with the {GRACE_MIN} min shutdown grace")
    elif not cap.fits(hours):
        reason = (f"needs {hours:.2f} h but ¥{budget.max_cost_yuan:g} buys {cap.hard_limit_min} min at "
                  f"${run_usd:g}/h, so the launch stops it at `BUDGET_HOURS` {cap.budget_hours:g} h (the "
                  f"{GRACE_MIN} min shutdown grace before the budget is spent); ¥{min_budget} would fit")
    elif offer.cloud in NO_FUSE_CLOUDS and not spec.artifacts.destinations:
        reason = no_fuse_reason(spec, offer.cloud)
    elif budget.managed_job and controller is None:
        reason = NO_CONTROLLER_REASON
    recipe_change = RECIPE[method] != RECIPE[train.method]
    if not reason and recipe_change and not budget.allow_recipe_change:
        reason = (f"changes the recipe to {RECIPE[method]} (allow with `--set budget.allow_recipe_change=true` "
                  f"or `--set train.method={method}`)")
    return Candidate(
        gpu=offer.gpu, accelerator=offer.accelerator, count=offer.count, method=method, cloud=offer.cloud,
        instance_type=offer.instance_type, region=offer.region, zone=offer.zone, spot=offer.spot,
        usd_per_hour=offer.usd_per_hour, max_usd_per_hour_in_region=offer.max_usd_per_hour_in_region,
        guard_usd_per_hour=guard_usd,
        priced_on=offer.priced_on, peak_gib=mem.peak_gib, vram_gib=gpu.vram_gib, host_gib=mem.host_gib,
        host_mem_gib=offer.host_mem_gib, hours=hours, train_hours=time.train_s / 3600, eval_hours=time.eval_s / 3600,
        overhead_hours=(sum(time.overheads_s.values()) + time.spot_extra_s) / 3600,
        overheads_hours=overheads_hours(time), cost_cny=cost, controller_cny=controller_cny, mfu=time.mfu,
        mfu_measured=time.mfu_measured,
        fits=fits_gpu and fits_host and not train.global_batch_size % per_round,
        within_budget=within_budget, recipe_change=recipe_change, reason=reason,
        save_every_steps=time.saves.every_steps if time.saves else 0, saves=time.saves.saves if time.saves else 0,
        budget_hours=cap.budget_hours, min_budget_cny=min_budget,
    )


NO_CONTROLLER_REASON = ("a managed job needs a place for SkyPilot's jobs controller and `budget.controller_infra` is "
                        "null: set it (e.g. `--set budget.controller_infra=aws/us-east-1`) or launch as a cluster "
                        "(`--set budget.managed_job=false`)")


def no_fuse_reason(spec: JobSpec, cloud: str) -> str:
    """Why an offer on a cloud without FUSE cannot run a job without destinations (one rule for estimate and launch)."""
    return (f"`{cloud}` cannot mount the run-dir bucket (no FUSE) and `artifacts.destinations` is empty, so the "
            f"results would be lost with the machine; to use it add one: "
            f"`--set 'artifacts.destinations=[\"hf://you/{spec.name}\"]'`")


def overheads_hours(time: TimeEstimate) -> dict[str, float]:
    """Return the time outside training and evaluation, by part, in hours (spot restarts included)."""
    parts = {name: seconds / 3600 for name, seconds in time.overheads_s.items()}
    if time.spot_extra_s:
        parts["spot restarts (expected)"] = time.spot_extra_s / 3600
    return parts


def _rejected_families(spec: JobSpec, candidates: list[Candidate]) -> list[str]:
    """One line per (method, GPU, count) with no accepted candidate: the reason of its cheapest.

    Families held back only because their method changes the recipe collapse into one line per method.
    """
    families: dict[tuple[str, str, int], list[Candidate]] = {}
    for c in candidates:
        families.setdefault((c.method, c.gpu, c.count), []).append(c)
    lines, alternatives = [], {}
    order = [spec.train.method, *(m for m in METHODS if m != spec.train.method)]
    for (method, gpu, count), members in sorted(families.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1:])):
        if any(c.accepted for c in members):
            continue
        best = min(members, key=lambda c: (not c.fits, c.cost_cny))
        if best.fits and best.within_budget and best.recipe_change:
            alternatives.setdefault(method, []).append(best)
            continue
        lines.append(f"{method} on {count}x {gpu}: {best.reason}")
    for method, members in alternatives.items():
        cheapest = min(members, key=lambda c: c.cost_cny)
        lines.append(
            f"{method} on any GPU: changes the recipe to {RECIPE[method]}; {len(members)} GPU set(s) fit within the "
            f"budget, cheapest ¥{cheapest.cost_cny:.2f} ({cheapest.count}x {cheapest.gpu}, {cheapest.cloud}); "
            f"allow with `--set budget.allow_recipe_change=true` or `--set train.method={method}`"
        )
    return lines


def estimate(spec: JobSpec, *, data_report: dict[str, Any] | None, catalog_dir: Path | None = None,
             now: date | None = None) -> Estimate:
    """Price every candidate for `spec` and choose the cheapest that fits within the budget.

    Args:
        spec: The job.
        data_report: `data_report.json` of `dream-job prep` (see `budget.tokens.load_data_report`);
            None estimates the tokens from the shipped s1K-1.1 length profile (labelled so).
        catalog_dir: SkyPilot's catalog folder; None means `~/.sky/catalogs/v8`. When the folder
            does not exist the shipped price snapshot is used.
        now: Today, for the age of the prices (default: the system date).

    Returns:
        The estimate, with a `choice`.

    Raises:
        NoOfferError: (a `BudgetError`) nothing fits within the budget; names the minimum budget
            that launches (the shutdown grace included) and carries the full estimate for rendering.
        BudgetError: An unknown GPU name, a cloud without prices, a data report made with
            another `data.max_length`, or an unknown model.
    """
    today = now or date.today()
    budget, cal = spec.budget, calibration()
    gpus = {resolve_gpu(name).name for name in budget.gpus}
    clouds = [c.lower() for c in budget.clouds]
    prices = load_prices(catalog_dir, clouds=clouds)
    controller = (controller_offer(budget.controller_infra, budget.controller_instance_type, catalog_dir)
                  if budget.managed_job and budget.controller_infra else None)
    offers = [o for o in prices.offers if (not gpus or o.gpu in gpus) and (budget.use_spot or not o.spot)]
    if not offers:
        raise BudgetError(
            f"no offer for `budget.gpus` {sorted(gpus)} in the prices ({prices.source})",
            hint="widen `budget.gpus` or `budget.clouds`; GPUs priced there: "
            + ", ".join(sorted({f"`{o.gpu}`" for o in prices.offers})),
        )
    shape, work = model_shape(spec), workload(spec, data_report)
    methods = [spec.train.method, *(m for m in METHODS if m != spec.train.method)]
    memory: dict[tuple[str, int], MemoryEstimate] = {}
    times: dict[tuple[str, str, int, bool, str], TimeEstimate] = {}
    candidates = []
    for method in methods:
        for offer in offers:
            mem_key, time_key = (method, offer.count), (offer.gpu, method, offer.count, offer.spot, offer.cloud)
            if mem_key not in memory:
                memory[mem_key] = _memory(spec, shape, method, offer.count, work, cal)
            if time_key not in times:
                times[time_key] = estimate_time(spec, shape, work, gpu_table()[offer.gpu], method=method,
                                                num_gpus=offer.count, spot=offer.spot, cloud=offer.cloud, cal=cal)
            candidates.append(_candidate(spec, offer, method, memory[mem_key], times[time_key], cal, controller))
    candidates.sort(key=lambda c: (not c.accepted, not c.fits, round(c.cost_cny, 2), c.hours))
    accepted = [c for c in candidates if c.accepted]
    choice = accepted[0] if accepted else None
    steps = next(iter(times.values())).steps
    notes = list(prices.notes)
    if work.is_estimate:
        notes.append("tokens are an ESTIMATE from the shipped s1K-1.1 length profile; pass `--data-report`")
    if choice is not None and not choice.mfu_measured:
        notes.append(f"MFU {choice.mfu:.2f} of {choice.gpu} {choice.method} is a placeholder from public sources "
                     f"(budget/data/calibration.toml, {cal.date}) until the GPU benchmark measures it")
    if choice is not None and spec.train.save_every_steps == "auto":
        hours = mtbf_hours(cal.section("preemption"), cloud=choice.cloud, spot=choice.spot, num_gpus=choice.count)
        notes.append(f"`train.save_every_steps` auto: every {choice.save_every_steps} steps ({choice.saves} save(s)) "
                     f"for {hours:g} h between {'preemptions' if choice.spot else 'failures'} of "
                     f"{choice.count}x {choice.gpu} {'spot' if choice.spot else 'on-demand'} on {choice.cloud} "
                     f"(an assumption: `preemption` in budget/data/calibration.toml)")
    if choice is not None and choice.count > 1 and spec.eval.suites:
        processes = min(spec.eval.processes or choice.count, choice.count)
        notes.append(f"evaluation decodes in {processes} process(es) on the {choice.count} GPUs, each with a whole "
                     "model and every n-th batch (`eval.processes`)")
    result = Estimate(
        job=spec.name, budget_cny=budget.max_cost_yuan, cny_per_usd=budget.cny_per_usd,
        prices_source=prices.source, prices_date=prices.date, tokens_source=work.source,
        tokens_are_estimate=work.is_estimate, rows=work.rows, tokens_per_epoch=work.tokens_per_epoch, steps=steps,
        managed_job=budget.managed_job, today=today, max_price_age_days=budget.max_catalog_age_days,
        cny_per_usd_source=budget.cny_per_usd_source, candidates=candidates,
        choice=choice, rejected=_rejected_families(spec, candidates), notes=notes, controller=controller,
    )
    if choice is None:
        _raise_no_offer(spec, result)
    return result


def _raise_no_offer(spec: JobSpec, result: Estimate) -> None:
    allowed = [c for c in result.candidates if c.fits and (spec.budget.allow_recipe_change or not c.recipe_change)]
    if allowed and spec.budget.managed_job and result.controller is None:
        raise NoOfferError(f"no offer can run `{spec.name}`: {NO_CONTROLLER_REASON}", hint=None, estimate=result,
                           min_budget_cny=None)
    # Offers on a FUSE-less cloud need a destination whatever the budget; the others a larger budget alone launches.
    stranded = [c for c in allowed if c.cloud in NO_FUSE_CLOUDS and not spec.artifacts.destinations]
    launchable = [c for c in allowed if c not in stranded]
    if no_fuse := [c for c in stranded if c.within_budget] or ([] if launchable else stranded):
        cheapest = min(no_fuse, key=lambda c: (c.min_budget_cny, c.cost_cny, c.hours))
        within = cheapest.within_budget
        raise NoOfferError(
            f"every offer that runs `{spec.name}`{f' within ¥{spec.budget.max_cost_yuan:g}' if within else ''} is on "
            f"a cloud without a bucket mount and `artifacts.destinations` is empty; the cheapest is {cheapest.count}x "
            f"{cheapest.gpu} on {cheapest.cloud} at ¥{cheapest.cost_cny:.2f}"
            f"{'' if within else f' (a budget of ¥{cheapest.min_budget_cny} with the shutdown grace)'}",
            hint=f"add a destination for the results: `--set 'artifacts.destinations=[\"hf://you/{spec.name}\"]'"
                 f"{'' if within else f' --set budget.max_cost_yuan={cheapest.min_budget_cny}'}`",
            estimate=result, min_budget_cny=None if within else cheapest.min_budget_cny,
        )
    where = "`budget.max_cost_yuan`"
    if launchable:
        # The budget that launches it: its cost, and enough for `BUDGET_HOURS` to leave the shutdown grace.
        cheapest = min(launchable, key=lambda c: (c.min_budget_cny, c.cost_cny, c.hours))
        needed = cheapest.min_budget_cny
        raise NoOfferError(
            f"no offer runs `{spec.name}` within {where} ¥{spec.budget.max_cost_yuan:g}: the cheapest that fits "
            f"needs ¥{needed} ({cheapest.count}x {cheapest.gpu}, {cheapest.method}, {cheapest.cloud} "
            f"{'spot' if cheapest.spot else 'on-demand'}, {cheapest.hours:.2f} h for ¥{cheapest.cost_cny:.2f}, "
            f"with `BUDGET_HOURS` ending {GRACE_MIN} min before the budget is spent)",
            hint=f"raise the budget to at least ¥{needed}: `--set budget.max_cost_yuan={needed}`",
            estimate=result, min_budget_cny=needed,
        )
    other = [c for c in result.candidates if c.fits]
    hint = "try more GPUs per machine, a shorter `data.max_length` or another `train.method`"
    if other:
        alt = min(other, key=lambda c: c.cost_cny)
        hint = (f"`--set train.method={alt.method}` fits ({alt.count}x {alt.gpu}, ¥{alt.cost_cny:.2f}) but changes "
                f"the recipe to {RECIPE[alt.method]}")
    raise NoOfferError(f"no offer fits `{spec.name}` with `train.method` `{spec.train.method}` in memory",
                       hint=hint, estimate=result, min_budget_cny=None)

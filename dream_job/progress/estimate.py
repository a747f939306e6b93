"""The estimate for an 80-column terminal: candidates, why the others lost, the choice box.

Typed loosely (`Any`): this module renders a `budget.Estimate` without importing `budget`.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

# How many alternatives the compact estimate lists after the choice (`--all` lists every one).
NUM_ALTERNATIVES = 5


def _reason_class(candidate: Any) -> str:
    """Name why a candidate was not chosen, in a few words (one class per line of the compact estimate).

    Follows the order of `budget.estimate`'s checks, so each candidate lands in the class of the
    reason it carries; `accepted` for a candidate that could be chosen.
    """
    if candidate.accepted:
        return "accepted"
    if candidate.reason.startswith("`train.global_batch_size`"):
        return "batch"
    if not candidate.fits:
        return "gpu_memory" if candidate.peak_gib > candidate.vram_gib else "host_ram"
    if not candidate.within_budget:
        return "budget"
    if "(no FUSE)" in candidate.reason:
        return "no_fuse"
    return "recipe" if candidate.recipe_change else "other"


def _alternatives(estimate: Any) -> list[Any]:
    """The choice, then the cheapest runnable offers: accepted ones first, then recipe changes within budget.

    One row per (GPUs, method, cloud, spot): another zone at another price of the same machine is no
    real alternative.
    """
    seen, rows = set(), []
    for c in estimate.candidates:
        if _reason_class(c) not in ("accepted", "recipe"):
            continue
        key = (c.count, c.gpu, c.method, c.cloud, c.spot)
        if key not in seen and c is not estimate.choice:
            seen.add(key)
            rows.append(c)
    return ([estimate.choice] if estimate.choice is not None else []) + rows


def _candidates_table(estimate: Any, rows: list[Any], *, title: str, caption: str) -> Table:
    from rich import box

    # No padding, a blank divider and numbers one wider than their widest value: eight columns in 80.
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, padding=0, show_edge=False,
                  caption_justify="left")
    table.add_column("GPUs", overflow="fold", min_width=13)  # `8x A100-80GB-SXM` wraps after `8x`
    for name in ("method", "cloud"):  # short identifiers: cut one and it reads as another
        table.add_column(name, no_wrap=True)
    # Numbers never wrap or shrink: rich narrows the text columns instead.
    for name, width in (("$/h", 6), ("GiB/GPU", 9), ("hours", 6), ("¥", 7)):
        table.add_column(name, justify="right", no_wrap=True, min_width=width)
    table.add_column(" note", overflow="fold", min_width=9)
    notes = {"budget": "over budget", "no_fuse": "no FUSE", "recipe": "recipe"}
    for c in rows:
        chosen = c is estimate.choice
        note = " ◀ choice" if chosen else " " + notes.get(_reason_class(c), "")
        table.add_row(f"{c.count}x {c.gpu}", c.method, c.cloud + (" spot" if c.spot else ""),
                      f"{c.usd_per_hour:.2f}", f"{c.peak_gib:.1f}/{c.vram_gib:.0f}", f"{c.hours:.2f}",
                      f"{c.cost_cny:.2f}", note, style="bold" if chosen else None)
    return table


def _rejection_lines(estimate: Any) -> list[tuple[str, str]]:
    """One (count, why) row per class of reason the other candidates were not chosen, most common first."""
    classes: dict[str, list[Any]] = {}
    for c in estimate.candidates:
        if (kind := _reason_class(c)) != "accepted":
            classes.setdefault(kind, []).append(c)
    budget = f"¥{estimate.budget_cny:g}"
    rows = []
    for kind, members in sorted(classes.items(), key=lambda kv: -len(kv[1])):
        cheapest = min(members, key=lambda c: c.cost_cny)
        example = f"{cheapest.method} on {cheapest.count}x {cheapest.gpu} ({cheapest.cloud})"
        if kind == "gpu_memory":
            closest = min(members, key=lambda c: c.peak_gib / c.vram_gib)
            why = (f"not enough GPU memory (closest: {closest.method} on {closest.count}x {closest.gpu} needs "
                   f"{closest.peak_gib:.1f} GiB per GPU, has {closest.vram_gib:.1f})")
        elif kind == "host_ram":
            why = f"not enough host RAM (e.g. {example} needs {cheapest.host_gib:.0f} GiB)"
        elif kind == "budget":
            # Over budget by its cost or by the wall-clock cap the launch would set: name what would fit.
            needs = min(members, key=lambda c: (c.min_budget_cny, c.cost_cny))
            why = (f"over the {budget} budget, its cost or its run time (cheapest needs ¥{needs.min_budget_cny}: "
                   f"{needs.method} on {needs.count}x {needs.gpu} ({needs.cloud}), ¥{needs.cost_cny:.2f})")
        elif kind == "no_fuse":
            clouds = ", ".join(sorted({c.cloud for c in members}))
            why = (f"{clouds}: no FUSE for the run-dir bucket and no `artifacts.destinations` "
                   f"(cheapest ¥{cheapest.cost_cny:.2f}: {example})")
        elif kind == "recipe":
            within = [c for c in members if c.within_budget and c.fits]
            best = min(within or members, key=lambda c: c.cost_cny)
            why = (f"change the recipe (cheapest ¥{best.cost_cny:.2f}: {best.method} on {best.count}x {best.gpu}, "
                   f"{best.cloud}); allow with `--set budget.allow_recipe_change=true`")
        elif kind == "batch":
            why = "`train.global_batch_size` is not a multiple of `train.micro_batch_size` x GPUs"
        else:
            why = f"other (e.g. {example}: {cheapest.reason})"
        rows.append((str(len(members)), why))
    return rows


def estimate_tables(estimate: Any, *, full: bool = False, launch_line: str | None = None,
                    plan_lines: list[tuple[str, str]] | None = None) -> list[Table]:
    """Render a `budget.Estimate` for an 80-column terminal: candidates, why the others lost, the choice.

    Compact (default): the choice and the `NUM_ALTERNATIVES` cheapest other machines, then one row
    per class of rejection with its count. `full`: every candidate that fits and one row per
    rejected (method, GPUs) family with its reason. Numbers never wrap or truncate; text folds.

    Args:
        estimate: The `budget.Estimate` (typed loosely: this module does not import `budget`).
        full: Render every candidate (`dream-job estimate --all`).
        launch_line: The `sky` line of the launch plan for the choice, when there is one.
        plan_lines: Extra (what, value) rows from the launch plan (budget guard, notes).

    Returns:
        Three tables: candidates (the choice first), rejections, the choice box.
    """
    rate = f"{estimate.cny_per_usd:g} CNY/USD ({estimate.cny_per_usd_source})"
    prices = f"prices: {estimate.prices_source}, from {estimate.prices_date}; tokens: {estimate.tokens_source}"
    per = ("$/h and ¥: the whole machine (all its GPUs); GiB/GPU: peak of the GPU's memory; recipe: changes the "
           "method (`--set train.method=...`); no FUSE: needs `artifacts.destinations`")
    if full:
        rows = [c for c in estimate.candidates if c.fits]
        title = f"{estimate.job}: {len(rows)} candidates that fit, cheapest first (budget ¥{estimate.budget_cny:g})"
    else:
        rows = _alternatives(estimate)[:NUM_ALTERNATIVES + 1]
        title = f"{estimate.job}: the choice and the next {len(rows) - 1 if estimate.choice else len(rows)} " \
            f"(budget ¥{estimate.budget_cny:g})"
    table = _candidates_table(estimate, rows, title=title, caption=f"{per}\n{prices}")

    rejected = Table(title="rejected (method on GPUs: why)" if full else
                     f"not chosen, by reason ({len(estimate.candidates)} candidates: offer x method)",
                     caption=None if full else "every candidate: `--all`; as JSON: `--json`", caption_justify="left",
                     show_header=full)
    if full:
        rejected.add_column("family")
        rejected.add_column("why", overflow="fold")
        for line in estimate.rejected:
            family, _, why = line.partition(": ")
            rejected.add_row(family, why)
    else:
        rejected.add_column("count", justify="right", no_wrap=True)
        rejected.add_column("why", overflow="fold")
        for count, why in _rejection_lines(estimate):
            rejected.add_row(count, why)
    return [table, rejected, _choice_table(estimate, rate, launch_line, plan_lines)]


def _choice_table(estimate: Any, rate: str, launch_line: str | None,
                  plan_lines: list[tuple[str, str]] | None) -> Table:
    summary = Table(title="choice", show_header=False)
    summary.add_column("what", no_wrap=True)
    summary.add_column("value", overflow="fold")
    choice = estimate.choice
    if (warning := estimate.stale_price_warning()) is not None:
        summary.add_row("WARNING", warning)
    if choice is None:
        summary.add_row("choice", "none fits within the budget")
    else:
        kind = "spot" if choice.spot else "on-demand"
        place = "/".join(p for p in (choice.cloud, choice.region, choice.zone) if p)
        summary.add_row("offer", f"{choice.count}x {choice.gpu} ({choice.accelerator}, {choice.vram_gib:.0f} GiB "
                        "each), "
                        f"`{choice.instance_type}` in `{place}`, {kind}, ${choice.usd_per_hour:.2f}/h for the machine "
                        f"(price of {choice.priced_on})")
        summary.add_row("method", choice.method + (" (changes the recipe)" if choice.recipe_change else ""))
        summary.add_row("peak memory", f"{choice.peak_gib:.1f} GiB of {choice.vram_gib:.1f} per GPU; host "
                        f"{choice.host_gib:.0f} GiB")
        summary.add_row("time", f"{choice.hours:.2f} h = train {choice.train_hours:.2f} + eval {choice.eval_hours:.2f}"
                        f" + overheads {choice.overhead_hours:.2f} ({estimate.steps} steps, MFU {choice.mfu:.2f})")
        if choice.saves:
            summary.add_row("checkpoints", f"{choice.saves} save(s), every {choice.save_every_steps} steps "
                            f"(`train.save_every_steps`), {choice.overheads_hours.get('checkpoint writes', 0.0):.2f} h "
                            "not overlapped by training")
        summary.add_row("overheads", ", ".join(f"{name} {hours:.2f} h" for name, hours in
                                               choice.overheads_hours.items() if hours >= 0.005))
        summary.add_row("cost", f"¥{choice.cost_cny:.2f} of ¥{estimate.budget_cny:g} at {rate}"
                        + (f" incl. ¥{choice.controller_cny:.2f} for the jobs controller VM" if choice.controller_cny
                           else ""))
        for what, value in plan_lines or []:
            summary.add_row(what, value)
        if launch_line:
            summary.add_row("launch", launch_line)
    for note in estimate.notes:
        summary.add_row("note", note)
    return summary

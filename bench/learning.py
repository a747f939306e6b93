"""Learning check: a small Dream-architecture model trained from scratch with dream-job's own
prep, trainer and sampler on synthetic addition with a written trace, then decoded.

The task (`dream_job.data.synthetic.generate_compact_rows`): "What is 493 + 817?", a trace of
one fixed-width line per column from the right (`3+7+0=10`, `9+1+1=11`, `4+8+1=13`), then
`Answer: 1310`. Every (a, b) pair is distinct, so the held-out questions are unseen in
training, and exact match measures the learned rule, not memorized rows. `--task story` uses
the smoke job's word problems with a long prose trace instead (with `--gen-length 192`).

Prints exact match per sampler setting (reference with each alg, fast) and tokens/s, so the
fast/reference speed ratio is measured side by side in one run, plus seconds per stage. The
CPU-sized version runs in the tests (`tests/integration/test_learning.py`: 2 digits, 4 x 128,
1,500 steps); the GPU version, with the defaults (3 digits, 160,000 rows, 2 epochs at batch 128
= 2,496 steps of a 6-layer, 256-wide model at lr 5e-4; on one H100: 129 s of training,
99.5-100 % exact match, bench/RESULTS.md):

    PYTHONPATH=. python bench/learning.py --device cuda --out /tmp/learn

Targets (GPU): exact match >= 95%; fast >= 5x the reference's tokens/s at <= 1 point lower.

Measured on CPU (bench/RESULTS.md): a learning rate of 2e-3 or more leaves the model on a
plateau where it writes the layout but no correct column sums; 5e-4 to 1e-3 gets off it.
With many epochs over few distinct rows a model can fit the rows without the rule: the first
H100 run (20 epochs of 6,000 story rows, weighted loss 0.005) got 0-1 % held-out exact match.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dream_job.data.synthetic import generate_compact_rows, generate_rows, write_jsonl  # noqa: E402
from dream_job.spec import load_spec  # noqa: E402

TASKS = {"compact": generate_compact_rows, "story": generate_rows}


def _model_folder(out: Path, *, hidden: int, layers: int, heads: int) -> Path:
    """Copy the tiny tokenizer and write a config of the requested size (token ids unchanged)."""
    folder = out / "model"
    shutil.copytree(REPO / "jobs" / "assets" / "tiny-dream", folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_size=hidden, num_hidden_layers=layers, max_window_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=max(1, heads // 2), intermediate_size=hidden * 3)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder


def learning_check(
    out: Path,
    *,
    task: str = "compact",
    rows: int,
    max_digits: int,
    hidden: int,
    layers: int,
    heads: int,
    epochs: int,
    batch: int,
    lr: float,
    warmup_ratio: float = 0.05,
    loss_weighting: str = "cart",
    holdout: int,
    gen_length: int,
    device: str,
    settings: list[dict[str, Any]],
    eval_batch: int = 64,
    num_proc: int = 1,
    untrained: bool = False,
    extra_overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Prepare, train and evaluate; return the final loss, steps, seconds per stage and, per
    setting name, {n, correct, accuracy, tokens_per_second, seconds}.

    With `untrained`, the model as training starts (random init) is decoded first with the
    first setting, under the name `untrained-<setting>`: the chance level of exact match.

    Writes everything under `out` (rows, model folder, run dir); a rerun reuses the prepared
    data and the finished training there.
    """
    from dream_job.data.prep import prepare_data
    from dream_job.eval.run import evaluate
    from dream_job.train.loop import train

    out.mkdir(parents=True, exist_ok=True)
    data = out / "rows.jsonl"
    start_s = time.perf_counter()
    write_jsonl(TASKS[task](rows, seed=1, max_digits=max_digits), data)
    model = _model_folder(out, hidden=hidden, layers=layers, heads=heads)
    base = [
        f"artifacts.run_dir={out / 'run'}", f"model.base={model}", "model.init=random", f"data.dataset={data}",
        "data.max_length=512",
        f"data.holdout_size={holdout}", "data.truncation=drop", f"data.num_proc={num_proc}",
        f"train.epochs={epochs}",
        f"train.global_batch_size={batch}", f"train.micro_batch_size={batch}", f"train.learning_rate={lr}",
        f"train.warmup_ratio={warmup_ratio}", f"train.loss_weighting={loss_weighting}",
        "train.save_every_steps=100000", "train.log_every_steps=50",
        f"train.device={device}", "train.activation_checkpointing=false", "train.cutoff=none",
        "eval.suites=[s1k_holdout]", f"eval.batch_size={min(holdout, eval_batch)}", f"eval.limit={holdout}",
        f"eval.sampler.gen_length={gen_length}", *(extra_overrides or []),
    ]
    spec = load_spec(REPO / "jobs" / "smoke.yaml", base)
    prepare_data(spec)
    prep_s = time.perf_counter() - start_s
    report: dict[str, Any] = {"prep_s": round(prep_s, 1), "settings": {}}

    def decode(setting: dict[str, Any], label: str, model_dir: Path | None, name: str) -> None:
        overrides = [f"eval.sampler.{k}={v}" for k, v in setting.items() if k != "name"]
        eval_start_s = time.perf_counter()
        entry = evaluate(load_spec(REPO / "jobs" / "smoke.yaml", base + overrides), model_label=label,
                         model_dir=model_dir)["s1k_holdout"]
        report["settings"][name] = {k: entry[k] for k in ("n", "correct", "accuracy", "tokens_per_second")}
        report["settings"][name]["seconds"] = round(time.perf_counter() - eval_start_s, 1)

    if untrained:  # `base` with `model.init: random` is the trainer's own random start
        decode(settings[0], "base", None, f"untrained-{settings[0]['name']}")
    train_start_s = time.perf_counter()
    result = train(spec)
    report.update(final_loss=result.final_loss, steps=result.steps,
                  train_s=round(time.perf_counter() - train_start_s, 1))
    for setting in settings:
        decode(setting, setting["name"], result.export_dir, setting["name"])
    return report


def default_settings(gen_length: int) -> list[dict[str, Any]]:
    """Reference decoding with each alg (one token per step) and the fast sampler."""
    reference = [{"name": f"reference-{alg}", "mode": "reference", "alg": alg, "steps": gen_length}
                 for alg in ("entropy", "maskgit_plus", "topk_margin", "origin")]
    return [*reference, {"name": "fast", "mode": "fast", "block_length": 32, "threshold": 0.9}]


def main() -> None:
    """Run the learning check and print its report as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/learning"))
    parser.add_argument("--task", choices=sorted(TASKS), default="compact")
    parser.add_argument("--rows", type=int, default=160_000)
    parser.add_argument("--max-digits", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--loss-weighting", default="cart")
    parser.add_argument("--holdout", type=int, default=200)
    parser.add_argument("--gen-length", type=int, default=48)
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--num-proc", type=int, default=8, help="processes that tokenize the rows")
    parser.add_argument("--only", nargs="*", help="sampler settings to run, the first also for --untrained (default: all)")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra job overrides")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--untrained", action="store_true", help="also decode the untrained model (chance level)")
    parser.add_argument("--report", type=Path, help="also write the report (JSON) to this file")
    args = parser.parse_args()
    by_name = {s["name"]: s for s in default_settings(args.gen_length)}
    settings = [by_name[name] for name in args.only] if args.only else list(by_name.values())  # in --only's order
    report = learning_check(
        args.out, task=args.task, rows=args.rows, max_digits=args.max_digits, hidden=args.hidden, layers=args.layers,
        heads=args.heads, epochs=args.epochs, batch=args.batch, lr=args.lr, warmup_ratio=args.warmup_ratio,
        loss_weighting=args.loss_weighting, holdout=args.holdout, gen_length=args.gen_length, device=args.device,
        settings=settings, eval_batch=args.eval_batch, num_proc=args.num_proc, untrained=args.untrained,
        extra_overrides=args.extra,
    )
    names = report["settings"]
    if "reference-entropy" in names and "fast" in names:
        reference, fast = names["reference-entropy"], names["fast"]
        report["fast_speedup"] = fast["tokens_per_second"] / reference["tokens_per_second"]
        report["fast_minus_reference_points"] = 100 * (fast["accuracy"] - reference["accuracy"])
    print(json.dumps(report, indent=2))
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

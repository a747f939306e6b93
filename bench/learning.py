"""Learning check: a small Dream-architecture model trained from scratch with dream-job's own
prep, trainer and sampler on synthetic addition with a written trace, then decoded.

Prints exact match per sampler setting (reference with each alg, fast) and tokens/s, so the
fast/reference speed ratio is measured side by side in one run. The CPU-sized version runs in
the tests (`tests/integration/test_learning.py`); the GPU version:

    PYTHONPATH=. python bench/learning.py --device cuda --rows 6000 --hidden 256 --layers 6 --epochs 8

Targets (GPU): exact match >= 95%; fast >= 5x the reference's tokens/s at <= 1 point lower.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dream_job.data.synthetic import generate_rows, write_jsonl  # noqa: E402
from dream_job.spec import load_spec  # noqa: E402


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
    rows: int,
    max_digits: int,
    hidden: int,
    layers: int,
    heads: int,
    epochs: int,
    batch: int,
    lr: float,
    holdout: int,
    gen_length: int,
    device: str,
    settings: list[dict[str, Any]],
) -> dict[str, Any]:
    """Prepare, train and evaluate; return {setting name: {accuracy, tokens_per_second, n}} and the final loss."""
    from dream_job.data.prep import prepare_data
    from dream_job.eval.run import evaluate
    from dream_job.train.loop import train

    out.mkdir(parents=True, exist_ok=True)
    data = out / "rows.jsonl"
    write_jsonl(generate_rows(rows, seed=1, max_digits=max_digits), data)
    model = _model_folder(out, hidden=hidden, layers=layers, heads=heads)
    base = [
        f"artifacts.run_dir={out / 'run'}", f"model.base={model}", f"data.dataset={data}", "data.max_length=512",
        f"data.holdout_size={holdout}", "data.truncation=drop", f"train.epochs={epochs}",
        f"train.global_batch_size={batch}", f"train.micro_batch_size={batch}", f"train.learning_rate={lr}",
        "train.warmup_ratio=0.05", "train.save_every_steps=100000", "train.log_every_steps=50",
        f"train.device={device}", "train.activation_checkpointing=false", "train.cutoff=none",
        "eval.suites=[s1k_holdout]", f"eval.batch_size={min(holdout, 64)}", f"eval.limit={holdout}",
        f"eval.sampler.gen_length={gen_length}",
    ]
    spec = load_spec(REPO / "jobs" / "smoke.yaml", base)
    prepare_data(spec)
    result = train(spec)
    report: dict[str, Any] = {"final_loss": result.final_loss, "steps": result.steps, "settings": {}}
    for setting in settings:
        name = setting["name"]
        overrides = [f"eval.sampler.{k}={v}" for k, v in setting.items() if k != "name"]
        entry = evaluate(load_spec(REPO / "jobs" / "smoke.yaml", base + overrides), model_label=name,
                         model_dir=result.export_dir)["s1k_holdout"]
        report["settings"][name] = {k: entry[k] for k in ("n", "correct", "accuracy", "tokens_per_second")}
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
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--max-digits", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--holdout", type=int, default=200)
    parser.add_argument("--gen-length", type=int, default=192)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    report = learning_check(
        args.out, rows=args.rows, max_digits=args.max_digits, hidden=args.hidden, layers=args.layers,
        heads=args.heads, epochs=args.epochs, batch=args.batch, lr=args.lr, holdout=args.holdout,
        gen_length=args.gen_length, device=args.device, settings=default_settings(args.gen_length),
    )
    reference = report["settings"]["reference-entropy"]
    fast = report["settings"]["fast"]
    report["fast_speedup"] = fast["tokens_per_second"] / reference["tokens_per_second"]
    report["fast_minus_reference_points"] = 100 * (fast["accuracy"] - reference["accuracy"])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

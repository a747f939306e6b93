"""Evaluation of the base and fine-tuned models: suites, answer checking, the run, the report.

- `suites.py`: load a benchmark's items (`EvalItem`) from the run, a hub dataset or a local file;
- `answers.py`: build prompts in the training layout, extract and check answers (pure);
- `run.py`: `evaluate()` one model on every suite, writing `<run_dir>/eval/`;
- `stats.py`: Wilson and Newcombe 95 % intervals (pure maths);
- `report.py`: `write_report()` turns `summary.json` and the item files into `report.md` (accuracy
  with intervals, the change base → final, example items side by side) and `accuracy.png`.
"""

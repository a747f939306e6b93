"""Everything that draws on the screen, one module per thing rendered.

Logs and progress go to stderr; results rendered here are printed by the CLI to stdout.
`console` (the consoles, logging setup), `data` (prep report), `training` (live training view),
`run` (stage lines, status table), `evaluation` (eval bars, accuracy table), `estimate`
(estimate tables). The names below are the public surface; import them from here.
"""

from dream_job.progress.console import setup_logging, stderr, stdout
from dream_job.progress.data import data_report_tables
from dream_job.progress.estimate import NUM_ALTERNATIVES, estimate_tables
from dream_job.progress.evaluation import ItemsPerSecondColumn, eval_progress, eval_summary_table
from dream_job.progress.run import stage_line, status_table
from dream_job.progress.training import TrainingView, training_status

__all__ = [
    "NUM_ALTERNATIVES", "ItemsPerSecondColumn", "TrainingView", "data_report_tables", "estimate_tables",
    "eval_progress", "eval_summary_table", "setup_logging", "stage_line", "status_table", "stderr", "stdout",
    "training_status",
]

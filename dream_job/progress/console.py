"""The two consoles (logs and progress to stderr, results to stdout) and the one logging setup.

`rich` respects `NO_COLOR`, and its output stays readable without colour.
"""

from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.logging import RichHandler

stderr = Console(stderr=True)
stdout = Console()


def setup_logging(level: int = logging.INFO) -> None:
    """Send `dream_job` logs to stderr (rich on a terminal, plain timestamped lines otherwise).

    Plain lines keep `docker logs` and `sky logs` readable; libraries' own chatter is quieted.
    """
    handler: logging.Handler
    if stderr.is_terminal:
        handler = RichHandler(console=stderr, show_path=False, show_time=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    # math_verify warns on every answer that its timeouts are off (on purpose: they are signal-based).
    for noisy in ("torchao", "torch.distributed", "datasets", "c10d-NullHandler-dcp_logger", "math_verify"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not stderr.is_terminal:
        # Off a terminal each datasets progress bar is one stray line per map/filter/load pass.
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # Under torchrun only rank 0 talks; the others log warnings and errors only.
    logging.getLogger("dream_job").setLevel(level if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

"""The training state a checkpoint holds, as DCP `Stateful` objects (architecture.md, style.md rule 4).

Job: say what is saved and how it is checked on resume; `train/checkpoint.py` writes and reads
them. `ModelOptimizerState` carries model and optimizer through DCP's `get_state_dict` /
`set_state_dict` (FSDP2 shards stay sharded), `DictState` any picklable state (a scheduler, a data
position), `TrainState` the step, tokens seen and what the run depends on (data hash, version).
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict
from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful
from torch.optim import Optimizer

from dream_job.errors import CheckpointError
from dream_job.train.distributed import current_rank

logger = logging.getLogger(__name__)

TRAIN_STATE_VERSION = 1  # layout of `TrainState`; a checkpoint of another version is refused


class ModelOptimizerState(Stateful):
    """Model (and optimizer) state through DCP's `get_state_dict` / `set_state_dict`.

    FSDP2 parameters stay DTensor shards (saved sharded, resharded on load); optimizer state is
    keyed by parameter FQN, so it depends on neither parameter order nor rank count. Load before
    the first backward (or after `zero_grad(set_to_none=True)`): DCP creates a fresh optimizer's
    state to load into only while no parameter has a gradient, else the moments are not loaded.

    Args:
        model: A plain or FSDP2 (`fully_shard`) module.
        optimizer: Its optimizer, or None to save and load the model only.
    """

    def __init__(self, model: nn.Module, optimizer: Optimizer | None = None) -> None:
        self.model = model
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        if self.optimizer is None:
            return {"model": get_model_state_dict(self.model)}
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optimizer": optim_sd}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # DCP has already filled the live tensors in place; this also restores the optimizer's
        # param_groups (lr, betas, weight decay), which are not tensors.
        if self.optimizer is None:
            set_model_state_dict(self.model, state_dict["model"])
        else:
            set_state_dict(self.model, self.optimizer, model_state_dict=state_dict["model"],
                           optim_state_dict=state_dict["optimizer"])


class DictState(Stateful):
    """Checkpoint any picklable state: a dict (updated in place) or an object with state dicts.

    The state is stored as one pickled value, so its keys may differ between save and load (DCP
    on its own loads only the keys the target already has). It must be identical on every rank.

    Args:
        target: A mutable dict, or an object with `state_dict()` / `load_state_dict()` (an LR scheduler).
    """

    def __init__(self, target: Any) -> None:
        self.target = target

    def state_dict(self) -> dict[str, Any]:
        return {"pickle": pickle.dumps(self.target if isinstance(self.target, dict) else self.target.state_dict())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = pickle.loads(state_dict["pickle"])
        if isinstance(self.target, dict):
            self.target.clear()
            self.target.update(state)
        else:
            self.target.load_state_dict(state)


@dataclass
class TrainState(Stateful):
    """Where training is, and what it depends on; checked on resume.

    Attributes:
        data_hash: Hash of the tokenized dataset; resuming with other data is refused.
        step: Optimizer steps done.
        tokens_seen: Training tokens consumed so far.
        world_size: Ranks of the run; a checkpoint from another world size loads (DCP reshards),
            and this run's value is kept.
        version: Layout version of this state; another version is refused.
    """

    data_hash: str
    step: int = 0
    tokens_seen: int = 0
    world_size: int = 1
    version: int = TRAIN_STATE_VERSION

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore `step` and `tokens_seen` from a checkpoint of the same run.

        Raises:
            CheckpointError: The saved `version` or `data_hash` differs from this run's.
        """
        if state_dict["version"] != self.version:
            raise CheckpointError(
                f"checkpoint `TrainState.version` is `{state_dict['version']}`, this code reads `{self.version}`",
                hint="resume with the dream-job version that wrote it, or use a new `artifacts.run_dir`",
            )
        if state_dict["data_hash"] != self.data_hash:
            raise CheckpointError(
                f"checkpoint `data_hash` is `{state_dict['data_hash']}`, this run's is `{self.data_hash}`",
                hint="the run dir was prepared with other data; use a new `artifacts.run_dir` or re-run prep "
                "with the original spec",
            )
        if state_dict["world_size"] != self.world_size and current_rank() == 0:
            logger.info("resharding checkpoint from %d to %d ranks", state_dict["world_size"], self.world_size)
        self.step = int(state_dict["step"])
        self.tokens_seen = int(state_dict["tokens_seen"])

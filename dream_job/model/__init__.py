"""Dream 7B as a PyTorch module, and its HF-format safetensors weights.

`config.py` holds the hyper-parameters and `config.json`, `dream.py` the architecture (one
readable file); `weights.py` loads a hub/HF folder into a model built on meta and writes an
HF-loadable export folder.
"""

from dream_job.model.dream import DreamConfig, DreamDecoderLayer, DreamModel, make_attention_mask
from dream_job.model.weights import WeightsMismatchError, load_safetensors_weights, save_hf_folder

__all__ = [
    "DreamConfig",
    "DreamDecoderLayer",
    "DreamModel",
    "WeightsMismatchError",
    "load_safetensors_weights",
    "make_attention_mask",
    "save_hf_folder",
]

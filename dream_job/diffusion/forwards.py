"""The model calls of diffusion decoding, run eagerly or replayed as CUDA graphs.

The samplers (`sampler.py`) call the model in two ways: a full forward over the whole batch
(every reference step; the start of every fast block, which also keeps the keys/values) and a
windowed step that runs only a few positions against the kept keys/values (the other fast
steps). `EagerForwards` runs them as plain PyTorch; `GraphedForwards` records each one once per
shape as a CUDA graph and replays it.

Why graphs: at batch 1 a Dream-7B step over a 33-token window launches ~1,000 kernels from
Python, and measured on an H100 that took ~27 ms per forward, while reading the bf16 weights
takes ~5 ms (bench/RESULTS.md, "Sampler"). A replay launches the whole recorded forward with one
call. Graphs need static shapes and addresses, so:

- inputs are copied into buffers owned by the graph before each replay, and the output is a
  buffer the next replay overwrites (callers read it before calling again);
- the kept keys/values live in per-layer buffers [B, K, L, E] that the full forward's graph writes;
  the windowed step gathers its cached positions from them by an index tensor inside its graph,
  so one recorded step serves every block whose window has the same size;
- prompts are left-padded up to a multiple of `CUDA_GRAPH_PROMPT_MULTIPLE` tokens
  (`prompt_multiple`), so batches of similar length share one set of graphs;
- a windowed step may also run a function of its hidden states and window (`then`: the fast
  sampler's greedy reveal) in the same graph, so a step needs no eager work but one host sync;
- graphs are kept for one batch shape at a time (batch size, length, padded or not): a new
  shape frees the old graphs and buffers. Evaluation sorts its items by prompt length, so a
  shape, once left, rarely comes back.

Both classes compute the same operations on the same inputs, so a replay gives bitwise the
eager result (the CUDA tests compare them); graphs change speed only. `make_forwards` picks one.

Shape letters as in `sampler.py`: B batch, L padded prompt + generation length, W window, S keys
of a windowed step (cached + window), K kv heads, E head dim, D hidden size.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from torch import Tensor

from dream_job.model.dream import DreamModel, KVCache
from dream_job.spec import CUDA_GRAPH_PROMPT_MULTIPLE, SamplerSpec

# What a windowed step may compute from its hidden states and its window tokens in the same call.
Then = Callable[[Tensor, Tensor], Tensor]


class EagerForwards:
    """The decoding forwards as plain PyTorch calls of the model (any device)."""

    prompt_multiple = 1

    def __init__(self, model: DreamModel) -> None:
        self.model = model
        self._kv: KVCache = []
        self._past: KVCache = []
        self._position_ids_BW: Tensor | None = None
        self._key_mask_BS: Tensor | None = None

    def full(
        self, x_BL: Tensor, position_ids_BL: Tensor, attention_mask_BL: Tensor | None, *, keep_kv: bool
    ) -> Tensor:
        """Return the hidden states of every position; with `keep_kv`, keep their keys/values."""
        if not keep_kv:
            return self.model.hidden_states(x_BL, attention_mask_BL=attention_mask_BL, position_ids_BL=position_ids_BL)
        hidden_BLD, self._kv = self.model.hidden_states_cached(
            x_BL, position_ids_BQ=position_ids_BL, key_mask_BS=attention_mask_BL
        )
        return hidden_BLD

    def start_window(self, cached_P: Tensor, position_ids_BW: Tensor, key_mask_BS: Tensor | None) -> None:
        """Fix, until the next call, which kept positions a step attends to and the window's positions.

        Args:
            cached_P: Indices (into the last `full(keep_kv=True)`'s positions) of the cached keys.
            position_ids_BW: RoPE positions of the window.
            key_mask_BS: Padding mask over the cached keys then the window (None: no padding).
        """
        self._past = [(k_BKLE[:, :, cached_P], v_BKLE[:, :, cached_P]) for k_BKLE, v_BKLE in self._kv]
        self._position_ids_BW, self._key_mask_BS = position_ids_BW, key_mask_BS

    def step(self, x_BW: Tensor, then: Then | None = None, then_key: Hashable = None) -> Tensor:
        """Return the hidden states of the window `x_BW` attending to the cached keys and to itself.

        With `then`, return `then(hidden_BWD, x_BW)` instead, computed in the same call: graphed
        forwards record it into the step's graph (it must have fixed shapes and no host syncs);
        `then_key` names it among the graphs (equal keys must mean the same function).
        """
        hidden_BWD, _ = self.model.hidden_states_cached(
            x_BW, position_ids_BQ=self._position_ids_BW, past_kv=self._past, key_mask_BS=self._key_mask_BS
        )
        return hidden_BWD if then is None else then(hidden_BWD, x_BW)


@dataclass
class _Recorded:
    """One captured CUDA graph: the buffers it reads, and the buffer it writes its output to."""

    graph: torch.cuda.CUDAGraph
    inputs: list[Tensor | None]
    output: Tensor


class GraphedForwards:
    """The decoding forwards recorded once per shape as CUDA graphs and replayed (CUDA only)."""

    prompt_multiple = CUDA_GRAPH_PROMPT_MULTIPLE

    def __init__(self, model: DreamModel) -> None:
        if model.lm_head.weight.device.type != "cuda":
            raise ValueError("CUDA graphs need a model on a CUDA device")
        self.model = model
        self._family: tuple[int, int, bool] | None = None  # (B, L, padded) the graphs below are for
        self._graphs: dict[tuple, _Recorded] = {}
        self._kv: KVCache = []
        self._pool: tuple[int, int] | None = None
        self._window_inputs: list[Tensor | None] = []
        self.captures = 0  # graphs recorded so far (benchmarks report it)

    def full(
        self, x_BL: Tensor, position_ids_BL: Tensor, attention_mask_BL: Tensor | None, *, keep_kv: bool
    ) -> Tensor:
        """`EagerForwards.full`, replayed; the result is overwritten by the next call."""
        self._enter_family(x_BL, attention_mask_BL)
        inputs = [x_BL, position_ids_BL, attention_mask_BL]
        key = ("full", keep_kv)
        if key not in self._graphs:
            model, kv = self.model, self._kv

            def full_forward(x_BL: Tensor, position_ids_BL: Tensor, attention_mask_BL: Tensor | None) -> Tensor:
                if not keep_kv:
                    return model.hidden_states(x_BL, attention_mask_BL=attention_mask_BL, position_ids_BL=position_ids_BL)
                hidden_BLD, new_kv = model.hidden_states_cached(
                    x_BL, position_ids_BQ=position_ids_BL, key_mask_BS=attention_mask_BL
                )
                for (k_BKLE, v_BKLE), (new_k_BKLE, new_v_BKLE) in zip(kv, new_kv, strict=True):
                    k_BKLE.copy_(new_k_BKLE)
                    v_BKLE.copy_(new_v_BKLE)
                return hidden_BLD

            self._graphs[key] = self._record(full_forward, inputs)
        return self._replay(self._graphs[key], inputs)

    def start_window(self, cached_P: Tensor, position_ids_BW: Tensor, key_mask_BS: Tensor | None) -> None:
        """`EagerForwards.start_window`: the step's graph gathers the cached keys by `cached_P` itself."""
        self._window_inputs = [cached_P, position_ids_BW, key_mask_BS]

    def step(self, x_BW: Tensor, then: Then | None = None, then_key: Hashable = None) -> Tensor:
        """`EagerForwards.step`, replayed (with `then` inside the graph); the result is overwritten by the next call."""
        inputs = [x_BW, *self._window_inputs]
        key = ("step", x_BW.shape[1], inputs[1].shape[0], then is not None, then_key)
        if key not in self._graphs:
            model, kv = self.model, self._kv

            def windowed_step(
                x_BW: Tensor, cached_P: Tensor, position_ids_BW: Tensor, key_mask_BS: Tensor | None
            ) -> Tensor:
                past = [(k_BKLE.index_select(2, cached_P), v_BKLE.index_select(2, cached_P)) for k_BKLE, v_BKLE in kv]
                hidden_BWD, _ = model.hidden_states_cached(
                    x_BW, position_ids_BQ=position_ids_BW, past_kv=past, key_mask_BS=key_mask_BS
                )
                return hidden_BWD if then is None else then(hidden_BWD, x_BW)

            self._graphs[key] = self._record(windowed_step, inputs)
        return self._replay(self._graphs[key], inputs)

    def _enter_family(self, x_BL: Tensor, attention_mask_BL: Tensor | None) -> None:
        """Drop the graphs of another batch shape; allocate the key/value buffers of this one."""
        family = (x_BL.shape[0], x_BL.shape[1], attention_mask_BL is not None)
        if family == self._family:
            return
        self._graphs.clear()
        self._kv = []
        torch.cuda.empty_cache()  # the old graphs' memory pool goes back before the new one grows
        config = self.model.config
        B, L = family[0], family[1]
        shape = (B, config.num_key_value_heads, L, config.head_dim)
        dtype, device = self.model.lm_head.weight.dtype, x_BL.device
        self._kv = [
            (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(config.num_hidden_layers)
        ]
        self._pool = torch.cuda.graph_pool_handle()
        self._family = family

    def _record(self, fn: Callable[..., Tensor], inputs: list[Tensor | None]) -> _Recorded:
        """Capture `fn` on copies of `inputs` (after one warm-up run on a side stream)."""
        static = [None if t is None else t.clone() for t in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # lazy cuBLAS/attention set-up must happen outside the capture
            fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = fn(*static)
        self.captures += 1
        return _Recorded(graph, static, output)

    @staticmethod
    def _replay(recorded: _Recorded, inputs: list[Tensor | None]) -> Tensor:
        """Copy `inputs` into the graph's buffers, replay it, return its output buffer."""
        for static, given in zip(recorded.inputs, inputs, strict=True):
            if static is not None:  # None (no padding mask) is None for the whole shape family
                static.copy_(given)
        recorded.graph.replay()
        return recorded.output


Forwards = EagerForwards | GraphedForwards


def compile_decoder_layers(model: DreamModel) -> None:
    """Compile every decoder layer's `forward_cached` in place (both decoding forwards go through it).

    Inductor fuses the ~45 small kernels of a layer (norms, RoPE, residuals, SwiGLU); at batch 1
    those, not the GEMMs, bound a graph-replayed step. A layer compiled once serves all 28 (the
    parameters are graph inputs); a new shape recompiles, then dims seen to vary become dynamic.
    """
    for layer in model.model.layers:
        layer.forward_cached = torch.compile(layer.forward_cached, fullgraph=True)  # instance attribute


def uncompile_decoder_layers(model: DreamModel) -> None:
    """Undo `compile_decoder_layers`: the layers run their class's eager `forward_cached` again."""
    for layer in model.model.layers:
        layer.__dict__.pop("forward_cached", None)


def make_forwards(model: DreamModel, settings: SamplerSpec) -> Forwards:
    """Return graphed forwards for a CUDA model with `cuda_graphs` on, else eager ones.

    With `settings.compile` on a CUDA model, first compiles its decoder layers in place.
    """
    on_cuda = model.lm_head.weight.device.type == "cuda"
    if settings.compile and on_cuda:
        compile_decoder_layers(model)
    if settings.cuda_graphs and on_cuda:
        return GraphedForwards(model)
    return EagerForwards(model)

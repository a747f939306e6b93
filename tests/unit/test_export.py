"""HF export: files Dream's remote code needs, bf16 round trip, LoRA merge, atomicity.

Shape letters as in `dream_job/model/dream.py`: B batch, L length, V vocab.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model, inject_adapter_in_model
from safetensors import safe_open

from dream_job.data.tokenizer import load_tokenizer
from dream_job.errors import CheckpointError
from dream_job.model import DreamConfig, DreamModel
from dream_job.model.tokenizer_files import DREAM_TOKENIZER_FILES, TOKENIZER_CONFIG_NAME
from dream_job.train.export import (
    REMOTE_CODE_FILES,
    dream_generation_config,
    export_hf,
    load_export,
)

from tests.conftest import FIXTURES, TINY_DREAM, tiny_config

TINY = tiny_config(initializer_range=0.1)  # O(1) logits, so the comparisons below are meaningful
WEIGHT_FILES = ("config.json", "model.safetensors.index.json", "model-00001-of-00001.safetensors")


def make_model(seed: int = 0) -> DreamModel:
    torch.manual_seed(seed)
    model = DreamModel(TINY)
    model.init_weights()
    with torch.no_grad():  # init_weights zeros biases; make them matter
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model.eval()


def bf16_rounded(model: DreamModel) -> DreamModel:
    """A copy whose weights went through bf16 and back to fp32, as an export stores them."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return rounded


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    load_tokenizer(str(TINY_DREAM)).save_pretrained(folder)
    return folder


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    """A stand-in base snapshot: Dream's published json files, fake vocab/merges and remote code."""
    folder = tmp_path / "base"
    shutil.copytree(FIXTURES / "dream-hub", folder)
    for name in ("vocab.json", "merges.txt", *REMOTE_CODE_FILES):
        (folder / name).write_text(f"# stand-in {name}\n")
    return folder


def input_ids() -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))


def test_export_round_trip_without_base_dir(tmp_path: Path, tokenizer_dir: Path, caplog) -> None:
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "run" / "export"
    with caplog.at_level(logging.WARNING, logger="dream_job.train.export"):
        assert export_hf(model, TINY, out_dir=out, tokenizer_dir=tokenizer_dir, base_dir=None) == out

    remote_code_warnings = [r for r in caplog.records if "trust_remote_code" in r.getMessage()]
    assert len(remote_code_warnings) == 1
    names = {p.name for p in out.iterdir()}
    tokenizer_names = {p.name for p in tokenizer_dir.iterdir()}
    assert {*WEIGHT_FILES, "generation_config.json", "dream_job_export.json", *tokenizer_names} == names
    assert not list(out.parent.glob(".*")), "no partial or temp folder may be left behind"

    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == dream_generation_config(TINY)
    assert (generation["alg"], generation["steps"], generation["eps"], generation["temperature"]) == (
        "origin", 512, 0.001, 0.0)
    assert generation["bos_token_id"] == generation["eos_token_id"] == generation["pad_token_id"] == 0
    assert generation["mask_token_id"] is None
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["model_type"] == "Dream" and hf_config["architectures"] == ["DreamModel"]
    assert hf_config["torch_dtype"] == "bfloat16" and "AutoModel" in hf_config["auto_map"]
    manifest = json.loads((out / "dream_job_export.json").read_text())
    assert manifest["num_parameters"] == TINY.num_parameters() == sum(p.numel() for p in model.parameters())
    assert (manifest["dtype"], manifest["lora"], manifest["remote_code"]) == ("bfloat16", False, False)
    assert set(manifest["files"]) == names
    with safe_open(out / "model-00001-of-00001.safetensors", framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}

    loaded, config = load_export(out)
    assert config == TINY
    ids_BL = input_ids()
    with torch.no_grad():
        logits_BLV = loaded.float()(ids_BL)
        expected_BLV = bf16_rounded(model)(ids_BL)
    torch.testing.assert_close(logits_BLV, expected_BLV, rtol=0, atol=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # The exported tokenizer folder loads on its own.
    assert load_tokenizer(str(out)).mask_token == "<|mask|>"


def test_export_copies_dream_files_from_base_dir(tmp_path: Path, tokenizer_dir: Path, base_dir: Path) -> None:
    (base_dir / "generation_config.json").write_text('{"alg": "origin", "steps": 7}\n')  # copied, not rewritten
    out = export_hf(make_model(), TINY, out_dir=tmp_path / "export", tokenizer_dir=tokenizer_dir, base_dir=base_dir,
                    base_tokenizer=True)
    for name in (*REMOTE_CODE_FILES, *DREAM_TOKENIZER_FILES, "generation_config.json"):
        assert (out / name).read_bytes() == (base_dir / name).read_bytes(), name
    assert not (out / "tokenizer.json").exists(), "the base's own tokenizer ships in Dream's published layout"
    assert json.loads((out / "dream_job_export.json").read_text())["remote_code"] is True
    # Our config, not the base one (which describes the 7B model).
    assert json.loads((out / "config.json").read_text())["hidden_size"] == TINY.hidden_size


def test_export_refuses_a_non_empty_folder_and_cleans_a_partial_one(tmp_path: Path, tokenizer_dir: Path) -> None:
    out = tmp_path / "export"
    partial = tmp_path / ".export.partial"
    partial.mkdir()
    (partial / "stale.txt").write_text("from a crashed export")
    export_hf(make_model(), TINY, out_dir=out, tokenizer_dir=tokenizer_dir, base_dir=None)
    assert not partial.exists() and not (out / "stale.txt").exists()
    with pytest.raises(CheckpointError, match="already exists and is not empty"):
        export_hf(make_model(), TINY, out_dir=out, tokenizer_dir=tokenizer_dir, base_dir=None)


def test_export_refuses_weights_that_do_not_match_the_config(tmp_path: Path, tokenizer_dir: Path) -> None:
    other = DreamConfig(**{**TINY.__dict__, "intermediate_size": 96})
    with pytest.raises(CheckpointError) as info:
        export_hf(make_model(), other, out_dir=tmp_path / "export", tokenizer_dir=tokenizer_dir, base_dir=None)
    assert any("mlp.up_proj.weight" in line for line in info.value.caused_by)
    assert not (tmp_path / "export").exists() and not (tmp_path / ".export.partial").exists()


LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)


@pytest.mark.parametrize("wrap", ["peft_model", "injected"])
def test_lora_export_merges_and_writes_the_adapter(tmp_path: Path, tokenizer_dir: Path, wrap: str) -> None:
    torch.manual_seed(3)
    if wrap == "peft_model":
        model = get_peft_model(make_model(), copy.deepcopy(LORA))
    else:
        model = inject_adapter_in_model(copy.deepcopy(LORA), make_model())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids_BL = input_ids()
    with torch.no_grad():
        peft_logits_BLV = model(ids_BL)
    assert not torch.allclose(peft_logits_BLV, make_model()(ids_BL), atol=1e-2), "B must be non-zero"

    with pytest.raises(ValueError, match="is_lora=False"):
        export_hf(model, TINY, out_dir=tmp_path / "x", tokenizer_dir=tokenizer_dir, base_dir=None)
    out = export_hf(model, TINY, out_dir=tmp_path / "export", tokenizer_dir=tokenizer_dir, base_dir=None, is_lora=True)

    assert {p.name for p in (out / "adapter").iterdir()} == {"adapter_model.safetensors", "adapter_config.json"}
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (4, 8)
    assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]
    with safe_open(out / "adapter" / "adapter_model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    assert len(keys) == 2 * 2 * TINY.num_hidden_layers  # A and B for q and v in every layer
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    manifest = json.loads((out / "dream_job_export.json").read_text())
    assert manifest["lora"] is True and "adapter/adapter_model.safetensors" in manifest["files"]

    loaded, _ = load_export(out, dtype=torch.float32)
    with torch.no_grad():
        merged_logits_BLV = loaded(ids_BL)
    # Merged weights are stored in bf16 (relative rounding 2^-8); logits are O(1).
    torch.testing.assert_close(merged_logits_BLV, peft_logits_BLV, rtol=0, atol=3e-2)
    # Bit-equal to peft's own merge rounded to bf16 (merged on a copy; the model must stay as is).
    peft_merged = copy.deepcopy(model)
    peft_merged = peft_merged.merge_and_unload() if wrap == "peft_model" else _merge_injected(peft_merged)
    reference = {k: v.to(torch.bfloat16).float() for k, v in peft_merged.state_dict().items()}
    assert reference.keys() == loaded.state_dict().keys()
    assert all(torch.equal(reference[k], v) for k, v in loaded.state_dict().items())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _merge_injected(model: DreamModel) -> DreamModel:
    """peft's merge for injected layers: merge in place, then swap each LoRA layer for its base layer."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    return model


def test_lora_adapter_loads_back_with_peft(tmp_path: Path, tokenizer_dir: Path) -> None:
    from peft import PeftModel

    torch.manual_seed(3)
    model = get_peft_model(make_model(), copy.deepcopy(LORA))
    out = export_hf(model, TINY, out_dir=tmp_path / "export", tokenizer_dir=tokenizer_dir, base_dir=None, is_lora=True)
    reloaded = PeftModel.from_pretrained(make_model(), out / "adapter").eval()
    ids_BL = input_ids()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids_BL), model(ids_BL))


def test_a_model_folder_as_tokenizer_dir_does_not_replace_the_exported_config(tmp_path: Path) -> None:
    # `jobs/assets/tiny-dream` holds a tokenizer *and* a (different) config.json.
    out = export_hf(make_model(), TINY, out_dir=tmp_path / "export", tokenizer_dir=TINY_DREAM, base_dir=None)
    assert DreamConfig.from_pretrained_dir(out) == TINY
    assert (out / "tokenizer.json").read_bytes() == (TINY_DREAM / "tokenizer.json").read_bytes()


def test_export_ships_the_tokenizer_the_job_trained_with(tmp_path: Path, qwen_dream_tokenizer_dir: Path) -> None:
    from dream_job.data.tokenizer import tokenizer_fingerprint

    # The base snapshot holds Dream's real tokenizer files; the job trained with another tokenizer
    # (`model.tokenizer`): the tiny one, whose vocabulary and chat template differ from Dream's.
    base = tmp_path / "base"
    shutil.copytree(qwen_dream_tokenizer_dir, base)
    for name in REMOTE_CODE_FILES:
        (base / name).write_text(f"# stand-in {name}\n")
    trained = load_tokenizer(str(TINY_DREAM))
    trained.chat_template = "{{ messages[0]['content'] }}<|im_end|>"  # not Dream's template
    run_tokenizer = tmp_path / "run-tokenizer"
    trained.save_pretrained(run_tokenizer)
    dream = load_tokenizer(str(base))
    assert tokenizer_fingerprint(dream) != tokenizer_fingerprint(trained)

    out = export_hf(make_model(), TINY, out_dir=tmp_path / "export", tokenizer_dir=run_tokenizer, base_dir=base,
                    base_tokenizer=False)
    shipped = load_tokenizer(str(out))
    assert shipped.chat_template == "{{ messages[0]['content'] }}<|im_end|>"
    assert tokenizer_fingerprint(shipped) == tokenizer_fingerprint(trained)
    # As saved, but for the config, which transformers 4.46.2 must read too (test_export_tokenizer.py).
    for source in run_tokenizer.iterdir():
        if source.name != TOKENIZER_CONFIG_NAME:
            assert (out / source.name).read_bytes() == source.read_bytes(), source.name
    assert not (out / "vocab.json").exists() and not (out / "merges.txt").exists()
    assert json.loads((out / "dream_job_export.json").read_text())["tokenizer_from"] == str(run_tokenizer)
    # The remote code still comes from the base snapshot.
    assert (out / "modeling_dream.py").read_bytes() == (base / "modeling_dream.py").read_bytes()

    # Trained with the base's own tokenizer: Dream's published files ship, and encode as the base does.
    out = export_hf(make_model(), TINY, out_dir=tmp_path / "export-base", tokenizer_dir=run_tokenizer, base_dir=base,
                    base_tokenizer=True)
    assert tokenizer_fingerprint(load_tokenizer(str(out))) == tokenizer_fingerprint(dream)
    assert json.loads((out / "dream_job_export.json").read_text())["tokenizer_from"] == str(base)


def _peft_merged_bf16(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The independent oracle: peft's own `merge_and_unload` on a copy, weights rounded to bf16."""
    merged = copy.deepcopy(model).merge_and_unload()
    return {k: v.to(torch.bfloat16) for k, v in merged.state_dict().items()}


def _read_shards(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    tensors = {}
    for file in sorted(set(weight_map.values())):
        with safe_open(out / file, framework="pt") as f:
            tensors.update({key: f.get_tensor(key) for key in f.keys()})
    return tensors, weight_map


def test_lora_export_streams_shard_by_shard_and_equals_peft_merge_of_a_bf16_base(
    tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import weakref

    import dream_job.train.export_weights as export_weights

    # As the trainer holds it: a bf16 frozen base with fp32 adapters on every linear (rank 8, alpha 16),
    # trained (random) so that every delta matters.
    torch.manual_seed(5)
    model = make_model().to(torch.bfloat16)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False))
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    # Small shards so the tiny model spans several; record every tensor each shard writer received
    # and whether the previous tensor was already freed when the next one came.
    limit = 6_000  # the whole tiny model is 53,824 bytes in bf16
    monkeypatch.setattr(export_weights, "MAX_SHARD_BYTES", limit)
    written: dict[str, list[int]] = {}
    previous_alive: list[bool] = []
    alive: list[weakref.ref] = []

    class RecordingWriter(export_weights.ShardWriter):
        def write(self, key: str, tensor: torch.Tensor) -> None:
            written.setdefault(self.path.name, []).append(tensor.numel() * tensor.element_size())
            previous_alive.append(any(ref() is not None for ref in alive))
            alive[:] = [weakref.ref(tensor)]
            super().write(key, tensor)

    monkeypatch.setattr(export_weights, "ShardWriter", RecordingWriter)
    out = export_hf(model, TINY, out_dir=tmp_path / "export", tokenizer_dir=tokenizer_dir, base_dir=None, is_lora=True)

    num_shards = len(written)
    assert num_shards >= 9
    assert list(written) == [f"model-{i:05d}-of-{num_shards:05d}.safetensors" for i in range(1, num_shards + 1)]
    # Every shard but one holding a single oversized tensor (the embedding, the lm_head) stays under the limit.
    assert all(sum(sizes) <= limit or sizes == [TINY.vocab_size * TINY.hidden_size * 2]
               for sizes in written.values())
    assert sum(map(sum, written.values())) == 53_824
    assert not any(previous_alive), "each written tensor must be dropped before the next is made"

    exported, weight_map = _read_shards(out)
    reference = _peft_merged_bf16(model)
    assert exported.keys() == reference.keys() == weight_map.keys()
    assert all(torch.equal(exported[k], reference[k]) for k in reference), "bit-equal to peft's merge"
    assert json.loads((out / "model.safetensors.index.json").read_text())["metadata"]["total_size"] == sum(
        t.numel() * 2 for t in reference.values())
    # The deltas were not lost: at least the q_proj weights differ from the bf16 base's.
    base_q = before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert not torch.equal(exported["model.layers.0.self_attn.q_proj.weight"], base_q)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the training model is never modified"

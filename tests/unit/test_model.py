"""Dream model maths against transformers' Qwen2 made bidirectional, and the HF weight round trip.

Shape letters as in `dream_job/model/dream.py`: B batch, L length, V vocab.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from dream_job.errors import CheckpointError
from dream_job.model import (
    DreamConfig,
    DreamModel,
    WeightsMismatchError,
    load_safetensors_weights,
    make_attention_mask,
    save_hf_folder,
)

HUB_CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "dream-hub" / "config.json"
# Larger init than Dream's 0.02 so logits are O(1) and a 1e-5 tolerance is a tight check.
TINY = DreamConfig(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_theta=10_000.0,
    max_position_embeddings=512,
    initializer_range=0.1,
    mask_token_id=255,
    pad_token_id=0,
    eos_token_id=0,
    bos_token_id=0,
)


def make_model(seed: int = 0) -> DreamModel:
    torch.manual_seed(seed)
    model = DreamModel(TINY)
    model.init_weights()
    with torch.no_grad():  # init_weights zeros biases; make them matter in the comparison
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model.eval()


def make_oracle(model: DreamModel, attn_implementation: str) -> Qwen2ForCausalLM:
    """transformers' Qwen2 with the causal mask removed, holding `model`'s weights."""
    qwen_config = Qwen2Config(
        vocab_size=TINY.vocab_size,
        hidden_size=TINY.hidden_size,
        intermediate_size=TINY.intermediate_size,
        num_hidden_layers=TINY.num_hidden_layers,
        num_attention_heads=TINY.num_attention_heads,
        num_key_value_heads=TINY.num_key_value_heads,
        rms_norm_eps=TINY.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": TINY.rope_theta},
        max_position_embeddings=TINY.max_position_embeddings,
        tie_word_embeddings=False,
        pad_token_id=TINY.pad_token_id,
    )
    qwen_config.is_causal = False  # masking_utils then builds a bidirectional padding mask
    qwen_config._attn_implementation = attn_implementation
    oracle = Qwen2ForCausalLM(qwen_config).eval()
    num_patched = 0
    for module in oracle.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False  # a skipped (None) mask would otherwise mean causal in SDPA
            num_patched += 1
    assert num_patched == TINY.num_hidden_layers
    oracle.load_state_dict(model.state_dict(), strict=True)  # same key names, no renaming
    return oracle


def oracle_logits(oracle, input_ids_BL, attention_mask_BL=None, position_ids_BL=None) -> torch.Tensor:
    with torch.no_grad():
        return oracle(
            input_ids=input_ids_BL, attention_mask=attention_mask_BL, position_ids=position_ids_BL, use_cache=False
        ).logits


def left_padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    input_ids_BL = torch.randint(1, TINY.vocab_size, (3, 10))
    attention_mask_BL = torch.ones(3, 10, dtype=torch.long)
    attention_mask_BL[1, :4] = 0
    attention_mask_BL[2, :7] = 0
    input_ids_BL[attention_mask_BL == 0] = TINY.pad_token_id
    position_ids_BL = (attention_mask_BL.cumsum(-1) - 1).clamp(min=0)  # as the sampler does
    return input_ids_BL, attention_mask_BL, position_ids_BL


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_oracle_is_bidirectional(attn_implementation: str) -> None:
    oracle = make_oracle(make_model(), attn_implementation)
    input_ids_BL, attention_mask_BL, _ = left_padded_batch()
    changed_BL = input_ids_BL.clone()
    changed_BL[:, -1] = (changed_BL[:, -1] + 1) % TINY.vocab_size
    for mask_BL in (None, attention_mask_BL):
        before = oracle_logits(oracle, input_ids_BL, mask_BL)
        after = oracle_logits(oracle, changed_BL, mask_BL)
        # Row 0's first token (and row 1's first real token) sees the last token only if bidirectional.
        assert (before[0, 0] - after[0, 0]).abs().max() > 1e-3
        assert (before[1, 4] - after[1, 4]).abs().max() > 1e-3


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_logits_match_bidirectional_qwen2_without_mask(attn_implementation: str) -> None:
    model = make_model()
    oracle = make_oracle(model, attn_implementation)
    torch.manual_seed(2)
    input_ids_BL = torch.randint(0, TINY.vocab_size, (2, 12))
    with torch.no_grad():
        logits_BLV = model(input_ids_BL)
    expected_BLV = oracle_logits(oracle, input_ids_BL)
    assert logits_BLV.shape == (2, 12, TINY.vocab_size)
    assert logits_BLV.std() > 0.3  # O(1) logits, so atol=1e-5 is not vacuous
    torch.testing.assert_close(logits_BLV, expected_BLV, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("shift_positions", [False, True])
def test_logits_match_bidirectional_qwen2_with_left_padding(
    attn_implementation: str, shift_positions: bool
) -> None:
    model = make_model()
    oracle = make_oracle(model, attn_implementation)
    input_ids_BL, attention_mask_BL, position_ids_BL = left_padded_batch()
    position_ids_BL = position_ids_BL if shift_positions else None
    with torch.no_grad():
        logits_BLV = model(input_ids_BL, attention_mask_BL=attention_mask_BL, position_ids_BL=position_ids_BL)
        hidden_BLD = model.hidden_states(
            input_ids_BL, attention_mask_BL=attention_mask_BL.bool(), position_ids_BL=position_ids_BL
        )
    expected_BLV = oracle_logits(oracle, input_ids_BL, attention_mask_BL, position_ids_BL)
    real_BL = attention_mask_BL.bool()
    torch.testing.assert_close(logits_BLV[real_BL], expected_BLV[real_BL], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.lm_head(hidden_BLD), logits_BLV, atol=0, rtol=0)  # bool mask == 1/0 mask
    # Padding really is masked: changing a pad token's id changes nothing at real positions.
    other_BL = input_ids_BL.clone()
    other_BL[2, 0] = 17
    with torch.no_grad():
        other_BLV = model(other_BL, attention_mask_BL=attention_mask_BL, position_ids_BL=position_ids_BL)
    torch.testing.assert_close(other_BLV[real_BL], logits_BLV[real_BL], atol=1e-6, rtol=0)


def test_attention_mask_matches_brute_force() -> None:
    _, attention_mask_BL, _ = left_padded_batch()
    attention_mask_BL[2] = 0
    mask_B1LL = make_attention_mask(attention_mask_BL)
    B, L = attention_mask_BL.shape
    assert mask_B1LL.shape == (B, 1, L, L) and mask_B1LL.dtype == torch.bool
    for b in range(B):
        for i in range(L):
            for j in range(L):
                assert mask_B1LL[b, 0, i, j] == (bool(attention_mask_BL[b, j]) or i == j), (b, i, j)


def test_padded_rows_are_finite_everywhere() -> None:
    model = make_model()
    input_ids_BL, attention_mask_BL, _ = left_padded_batch()
    attention_mask_BL[2] = 0  # a row with no real token at all
    logits_BLV = model(input_ids_BL, attention_mask_BL=attention_mask_BL)
    assert torch.isfinite(logits_BLV).all()
    logits_BLV.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_rope_stays_fp32_after_casts_and_to_empty() -> None:
    model = make_model()
    expected = model.model.rotary_emb.compute_inv_freq("cpu")
    assert "model.rotary_emb.inv_freq" not in model.state_dict()  # non-persistent
    model.to(torch.bfloat16)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, expected, atol=0, rtol=0)
    with torch.device("meta"):
        meta_model = DreamModel(TINY)
    meta_model.to_empty(device="cpu")
    torch.testing.assert_close(meta_model.model.rotary_emb.inv_freq, expected, atol=0, rtol=0)


def test_meta_save_load_round_trip_is_bit_equal(tmp_path: Path) -> None:
    with torch.device("meta"):
        source = DreamModel(TINY)
    source.to_empty(device="cpu")
    torch.manual_seed(3)
    source.init_weights()
    out = tmp_path / "export"
    save_hf_folder(source, TINY, out, dtype=torch.float32, max_shard_bytes=100_000)

    index = json.loads((out / "model.safetensors.index.json").read_text())
    shard_names = sorted(set(index["weight_map"].values()))
    assert len(shard_names) > 2
    assert shard_names == sorted(p.name for p in out.glob("model-*.safetensors"))
    assert shard_names[0] == f"model-00001-of-{len(shard_names):05d}.safetensors"
    assert set(index["weight_map"]) == set(source.state_dict())
    assert index["metadata"]["total_size"] == TINY.num_parameters() * 4
    written = json.loads((out / "config.json").read_text())
    assert written["torch_dtype"] == "float32" and written["architectures"] == ["DreamModel"]
    assert DreamConfig.from_pretrained_dir(out) == TINY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temp folder left beside it

    with torch.device("meta"):
        loaded = DreamModel(DreamConfig.from_pretrained_dir(out))
    load_safetensors_weights(loaded, out)
    source_state, loaded_state = source.state_dict(), loaded.state_dict()
    assert source_state.keys() == loaded_state.keys()
    for key, tensor in source_state.items():
        assert loaded_state[key].device.type == "cpu" and torch.equal(loaded_state[key], tensor), key
    input_ids_BL = torch.randint(0, TINY.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids_BL), source(input_ids_BL))


def test_bf16_save_then_load_with_dtype(tmp_path: Path) -> None:
    source = make_model()
    save_hf_folder(source, TINY, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with torch.device("meta"):
        loaded = DreamModel(TINY)
    load_safetensors_weights(loaded, tmp_path / "bf16", dtype=torch.float32)
    for key, tensor in source.state_dict().items():
        assert loaded.state_dict()[key].dtype == torch.float32
        assert torch.equal(loaded.state_dict()[key], tensor.to(torch.bfloat16).float()), key


def test_save_refuses_non_empty_folder_and_wrong_config(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        save_hf_folder(make_model(), TINY, tmp_path / "out")
    with pytest.raises(ValueError, match="parameters but `config` describes"):
        save_hf_folder(make_model(), DreamConfig(), tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_single_file_with_missing_unexpected_and_misshaped_keys(tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in make_model().state_dict().items()}
    del state["model.norm.weight"]
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(8)
    state["lm_head.weight"] = torch.zeros(255, 64)
    save_file(state, tmp_path / "model.safetensors")
    with torch.device("meta"):
        model = DreamModel(TINY)
    with pytest.raises(WeightsMismatchError) as info:
        load_safetensors_weights(model, tmp_path)
    assert isinstance(info.value, CheckpointError) and info.value.exit_code == 1
    assert str(info.value) == (
        f"weights in `{tmp_path}` do not match the model: 2 key(s) missing or unexpected, 1 shape(s) differ\n"
        "  missing `model.norm.weight`\n"
        "  unexpected `model.layers.0.self_attn.rotary_emb.inv_freq` (in `model.safetensors`)\n"
        "  `lm_head.weight`: checkpoint shape [255, 64], model shape [256, 64]"
    )
    assert model.lm_head.weight.is_meta  # nothing was loaded before the check failed


def test_load_without_weights_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no `model.safetensors.index.json` or `model.safetensors`"):
        load_safetensors_weights(DreamModel(TINY), tmp_path)


def test_damaged_or_missing_shard_is_a_checkpoint_error(tmp_path: Path) -> None:
    """A truncated copy or a shard the index names but the folder lacks: exit 1 naming the file, not a crash."""
    torch.manual_seed(0)
    save_hf_folder(DreamModel(TINY), TINY, tmp_path / "model", max_shard_bytes=100_000)
    shards = sorted((tmp_path / "model").glob("model-*.safetensors"))
    assert len(shards) >= 2
    shards[1].write_bytes(shards[1].read_bytes()[:-10])  # a copy cut short: the header's offsets overrun
    with torch.device("meta"):
        model = DreamModel(TINY)
    with pytest.raises(CheckpointError) as info:
        load_safetensors_weights(model, tmp_path / "model")
    assert info.value.message.startswith(f"`{shards[1]}` is not a readable safetensors file (")
    assert info.value.hint == "the weights folder is incomplete or damaged: copy, download or export it again"
    shards[1].unlink()
    with pytest.raises(CheckpointError) as info:
        load_safetensors_weights(model, tmp_path / "model")
    assert info.value.message == f"`{shards[1]}` is missing" and info.value.exit_code == 1


def test_hub_config_gives_7b_numbers_and_round_trips() -> None:
    config = DreamConfig.from_json_file(HUB_CONFIG)
    assert config == DreamConfig()  # the defaults are Dream 7B
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (3584, 28, 28)
    assert (config.num_key_value_heads, config.head_dim, config.intermediate_size) == (4, 128, 18944)
    assert (config.vocab_size, config.mask_token_id, config.pad_token_id) == (152064, 151666, 151643)
    assert config.rope_theta == 1_000_000.0 and config.rms_norm_eps == 1e-6
    assert config.num_parameters() == 7_615_616_512
    assert config.to_hf_dict() == json.loads(HUB_CONFIG.read_text())
    assert list(DreamConfig().to_hf_dict()) == sorted(set(json.loads(HUB_CONFIG.read_text())) - {"_name_or_path"})
    assert DreamConfig().to_hf_dict()["max_window_layers"] == 28


def test_config_rejects_what_the_model_does_not_implement() -> None:
    hub = json.loads(HUB_CONFIG.read_text())
    with pytest.raises(ValueError, match="^`tie_word_embeddings` must be `false`"):
        DreamConfig.from_dict({**hub, "tie_word_embeddings": True})
    with pytest.raises(ValueError, match="^config key `hidden_act` must be `'silu'` for Dream, got `'gelu'`$"):
        DreamConfig.from_dict({**hub, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="rope_scaling"):
        DreamConfig.from_dict({**hub, "rope_scaling": {"type": "yarn", "factor": 4.0}})


def test_tiny_num_parameters_matches_the_module() -> None:
    assert TINY.num_parameters() == sum(p.numel() for p in DreamModel(TINY).parameters())

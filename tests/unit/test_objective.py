"""Tests of dream_job.diffusion.objective against brute-force references (dream.md §6-§10).

Shape legend: B batch, L length, D hidden, V vocab, N masked positions.
"""

import pytest
import torch
import torch.nn.functional as F

from dream_job.diffusion.objective import (
    cutoff_none,
    cutoff_random_with_input_pad,
    loss_weights,
    mask_tokens,
    masked_diffusion_loss,
    sample_t,
    select_predictor_positions,
)

MASK_ID = 99
PAD = 9


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- sample_t


def test_sample_t_in_range_and_deterministic():
    t_B = sample_t(20000, eps=1e-3, generator=_gen(0), device="cpu")
    assert t_B.shape == (20000,)
    assert t_B.min() >= 1e-3 and t_B.max() <= 1.0
    assert abs(t_B.mean().item() - (1 + 1e-3) / 2) < 0.01
    assert torch.equal(t_B, sample_t(20000, eps=1e-3, generator=_gen(0), device="cpu"))


def test_sample_t_large_eps_bounds():
    t_B = sample_t(1000, eps=0.9, generator=_gen(1), device="cpu")
    assert t_B.min() >= 0.9 and t_B.max() <= 1.0


# ---------------------------------------------------------------- mask_tokens


def _prompt_batch(num_rows: int, length: int, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids_BL = torch.randint(0, 50, (num_rows, length), generator=_gen(123))
    loss_mask_BL = torch.zeros(num_rows, length, dtype=torch.bool)
    loss_mask_BL[:, prompt_len:] = True
    return ids_BL, loss_mask_BL


def test_mask_tokens_never_masks_prompt_and_sets_mask_id():
    ids_BL, loss_mask_BL = _prompt_batch(32, 64, 20)
    t_B = torch.full((32,), 0.99)
    noisy_BL, masked_BL = mask_tokens(ids_BL, loss_mask_BL, t_B, mask_token_id=MASK_ID, generator=_gen(0))
    assert not masked_BL[:, :20].any()
    assert torch.equal(noisy_BL[:, :20], ids_BL[:, :20])
    assert torch.equal(noisy_BL[masked_BL], torch.full((int(masked_BL.sum()),), MASK_ID))
    assert torch.equal(noisy_BL[~masked_BL], ids_BL[~masked_BL])
    assert masked_BL[:, 20:].float().mean() > 0.95


@pytest.mark.parametrize("t", [0.1, 0.3, 0.7])
def test_mask_tokens_rate_matches_t(t: float):
    ids_BL, loss_mask_BL = _prompt_batch(200, 250, 50)
    _, masked_BL = mask_tokens(ids_BL, loss_mask_BL, torch.full((200,), t), mask_token_id=MASK_ID, generator=_gen(7))
    rate = masked_BL.sum().item() / loss_mask_BL.sum().item()
    assert abs(rate - t) < 0.01, rate


def test_mask_tokens_per_row_t():
    ids_BL, loss_mask_BL = _prompt_batch(2, 20000, 0)
    t_B = torch.tensor([0.2, 0.8])
    _, masked_BL = mask_tokens(ids_BL, loss_mask_BL, t_B, mask_token_id=MASK_ID, generator=_gen(3))
    assert torch.allclose(masked_BL.float().mean(dim=1), t_B, atol=0.015)


def test_mask_tokens_deterministic_given_seed():
    ids_BL, loss_mask_BL = _prompt_batch(8, 40, 10)
    t_B = torch.rand(8, generator=_gen(5))
    a = mask_tokens(ids_BL, loss_mask_BL, t_B, mask_token_id=MASK_ID, generator=_gen(11))
    b = mask_tokens(ids_BL, loss_mask_BL, t_B, mask_token_id=MASK_ID, generator=_gen(11))
    c = mask_tokens(ids_BL, loss_mask_BL, t_B, mask_token_id=MASK_ID, generator=_gen(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_mask_tokens_forces_one_mask_when_none_drawn():
    ids_BL, loss_mask_BL = _prompt_batch(4, 30, 10)
    loss_mask_BL[3] = False  # a row with nothing maskable must stay unmasked
    _, masked_BL = mask_tokens(ids_BL, loss_mask_BL, torch.zeros(4), mask_token_id=MASK_ID, generator=_gen(0))
    assert masked_BL.sum(dim=1).tolist() == [1, 1, 1, 0]
    assert not (masked_BL & ~loss_mask_BL).any()


def test_mask_tokens_forced_position_is_uniform_over_maskable():
    ids_BL, loss_mask_BL = _prompt_batch(6000, 12, 4)  # 8 maskable positions per row
    _, masked_BL = mask_tokens(ids_BL, loss_mask_BL, torch.zeros(6000), mask_token_id=MASK_ID, generator=_gen(2))
    counts_L = masked_BL.sum(dim=0)
    assert counts_L[:4].sum() == 0
    assert ((counts_L[4:] - 750).abs() < 120).all(), counts_L.tolist()


# ---------------------------------------------------------------- loss_weights


def _cart_brute_force(masked_BL: torch.Tensor, p: float) -> torch.Tensor:
    num_rows, length = masked_BL.shape
    w_BL = torch.zeros(num_rows, length, dtype=torch.float64)
    for b in range(num_rows):
        for i in range(length):
            if not masked_BL[b, i]:
                continue
            for j in range(length):
                if j != i and not masked_BL[b, j]:
                    w_BL[b, i] += 0.5 * p * (1 - p) ** (abs(i - j) - 1)
    return w_BL


@pytest.mark.parametrize("p", [0.1, 0.3, 0.8, 0.99])
@pytest.mark.parametrize("length", [1, 2, 7, 33, 64])
def test_cart_matches_brute_force_random_masks(p: float, length: int):
    g = _gen(length)
    masked_BL = torch.rand(4, length, generator=g) < torch.rand(4, 1, generator=g)
    t_B = torch.rand(4, generator=g)
    w_BL = loss_weights(masked_BL, t_B, scheme="cart", cart_p=p)
    torch.testing.assert_close(w_BL.double(), _cart_brute_force(masked_BL, p), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cart_edge_cases(p: float):
    length = 20
    all_masked = torch.ones(1, length, dtype=torch.bool)
    none_masked = torch.zeros(1, length, dtype=torch.bool)
    single_clean = torch.ones(1, length, dtype=torch.bool)
    single_clean[0, 6] = False
    single_masked = torch.zeros(1, length, dtype=torch.bool)
    single_masked[0, 9] = True
    masked_BL = torch.cat([all_masked, none_masked, single_clean, single_masked])
    w_BL = loss_weights(masked_BL, torch.full((4,), 0.5), scheme="cart", cart_p=p)
    torch.testing.assert_close(w_BL.double(), _cart_brute_force(masked_BL, p), rtol=1e-5, atol=1e-6)
    assert (w_BL[0] == 0).all() and (w_BL[1] == 0).all()
    assert w_BL[2, 5].item() == pytest.approx(0.5 * p)  # direct neighbour of the only clean token
    assert w_BL[2, 6].item() == 0.0
    # Masked token 9 with clean context 0..19 except itself: Σ over both sides, each side Σ_{d=1}^{n} ½p(1-p)^(d-1).
    expected = 0.5 * (1 - (1 - p) ** 9) + 0.5 * (1 - (1 - p) ** 10)
    assert w_BL[3, 9].item() == pytest.approx(expected, rel=1e-5)
    assert (w_BL < 1).all() and (w_BL >= 0).all()


def test_cart_matches_dense_kernel_at_long_length():
    # The official implementation: clean_mask[B, L] @ G[L, L] (dream.md §9), affordable at L = 2048.
    length, p = 2048, 0.1
    g = _gen(4)
    masked_BL = torch.rand(2, length, generator=g) < 0.6
    dist_LL = (torch.arange(length)[:, None] - torch.arange(length)[None, :]).abs().double()
    kernel_LL = torch.where(dist_LL == 0, 0.0, 0.5 * p * (1 - p) ** (dist_LL - 1))
    expected_BL = ((~masked_BL).double() @ kernel_LL) * masked_BL
    w_BL = loss_weights(masked_BL, torch.full((2,), 0.6), scheme="cart", cart_p=p)
    torch.testing.assert_close(w_BL.double(), expected_BL, rtol=1e-4, atol=1e-5)


def test_cart_runs_at_16k():
    masked_BL = torch.rand(2, 16384, generator=_gen(0)) < 0.5
    w_BL = loss_weights(masked_BL, torch.full((2,), 0.5), scheme="cart", cart_p=0.1)
    assert w_BL.shape == (2, 16384) and torch.isfinite(w_BL).all()
    assert (w_BL[~masked_BL] == 0).all() and (w_BL < 1).all()
    # i.i.d. clean with probability 0.5 and kernel mass ½ per side: E[w | masked] = 0.5.
    assert w_BL[masked_BL].mean().item() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize(("t", "expected"), [(0.1, 0.893), (0.5, 0.508), (0.9, 0.114)])
def test_cart_mean_weight_tracks_one_minus_t(t: float, expected: float):
    # dream.md §9: L = 512, 100 clean prompt tokens, rest masked with probability t.
    num_rows, length = 256, 512
    u_BL = torch.rand(num_rows, length, generator=_gen(9))
    masked_BL = u_BL < t
    masked_BL[:, :100] = False
    w_BL = loss_weights(masked_BL, torch.full((num_rows,), t), scheme="cart", cart_p=0.1)
    assert w_BL[masked_BL].mean().item() == pytest.approx(expected, abs=0.03)


def test_time_weight_schemes():
    masked_BL = torch.tensor([[False, True, True], [True, False, False]])
    t_B = torch.tensor([0.25, 0.5])
    torch.testing.assert_close(
        loss_weights(masked_BL, t_B, scheme="linear"), torch.tensor([[0.0, 0.75, 0.75], [0.5, 0.0, 0.0]])
    )
    torch.testing.assert_close(
        loss_weights(masked_BL, t_B, scheme="inverse_t"), torch.tensor([[0.0, 4.0, 4.0], [2.0, 0.0, 0.0]])
    )
    torch.testing.assert_close(loss_weights(masked_BL, t_B, scheme="none"), masked_BL.float())
    with pytest.raises(ValueError, match="unknown time weight scheme `original`"):
        loss_weights(masked_BL, t_B, scheme="original")  # type: ignore[arg-type]


# ---------------------------------------------------------------- logit shift and loss


def test_select_predictor_positions_shifts_by_one():
    masked_BL = torch.tensor([[False, False, True, True], [True, False, False, True]])
    batch_idx_N, pos_idx_N = select_predictor_positions(masked_BL)
    assert batch_idx_N.tolist() == [0, 0, 1, 1]
    assert pos_idx_N.tolist() == [1, 2, 0, 2]  # masked position 0 uses hidden 0 (official shift)


def _naive_loss(hidden_BLD, weight_VD, ids_BL, masked_BL, w_BL):
    logits_BLV = (hidden_BLD @ weight_VD.T).double()
    shifted_BLV = torch.cat([logits_BLV[:, :1], logits_BLV[:, :-1]], dim=1)  # dream.md §6
    ce_BL = F.cross_entropy(shifted_BLV.transpose(1, 2), ids_BL, reduction="none")
    ce_BL = ce_BL * masked_BL
    return (w_BL.double() * ce_BL).sum() / masked_BL.sum()


def _loss_inputs(seed: int, *, dtype=torch.float64, mask_first: bool = False):
    g = _gen(seed)
    num_rows, length, hidden, vocab = 3, 17, 8, 23
    hidden_BLD = torch.randn(num_rows, length, hidden, generator=g, dtype=dtype).requires_grad_()
    weight_VD = torch.randn(vocab, hidden, generator=g, dtype=dtype).requires_grad_()
    ids_BL = torch.randint(0, vocab, (num_rows, length), generator=g)
    masked_BL = torch.rand(num_rows, length, generator=g) < 0.5
    masked_BL[:, 0] = mask_first
    w_BL = loss_weights(masked_BL, torch.rand(num_rows, generator=g), scheme="cart", cart_p=0.3)
    return hidden_BLD, weight_VD, ids_BL, masked_BL, w_BL


@pytest.mark.parametrize("chunk_size", [1, 5, "N", "N+7"])
@pytest.mark.parametrize("mask_first", [False, True])
def test_masked_loss_matches_naive_value_and_grads(chunk_size, mask_first: bool):
    hidden_BLD, weight_VD, ids_BL, masked_BL, w_BL = _loss_inputs(0, mask_first=mask_first)
    num = int(masked_BL.sum())
    size = {"N": num, "N+7": num + 7}.get(chunk_size, chunk_size)
    loss, num_masked = masked_diffusion_loss(hidden_BLD, weight_VD, ids_BL, masked_BL, w_BL, chunk_size=size)
    assert num_masked == num
    grad_hidden, grad_weight = torch.autograd.grad(loss, [hidden_BLD, weight_VD])
    ref = _naive_loss(hidden_BLD, weight_VD, ids_BL, masked_BL, w_BL)
    ref_grad_hidden, ref_grad_weight = torch.autograd.grad(ref, [hidden_BLD, weight_VD])
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_hidden, ref_grad_hidden, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_weight, ref_grad_weight, rtol=1e-10, atol=1e-12)
    assert grad_hidden[:, -1].abs().sum() == 0  # the last position's logits are never used


def test_masked_loss_fp32_and_bf16_inputs():
    hidden_BLD, weight_VD, ids_BL, masked_BL, w_BL = _loss_inputs(1)
    ref = _naive_loss(hidden_BLD, weight_VD, ids_BL, masked_BL, w_BL).detach()
    for dtype, tol in [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)]:
        h = hidden_BLD.detach().to(dtype)
        loss, _ = masked_diffusion_loss(h, weight_VD.detach().to(dtype), ids_BL, masked_BL, w_BL, chunk_size=4)
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(ref.item(), rel=tol)


def test_masked_loss_with_no_masked_tokens_is_zero_and_differentiable():
    hidden_BLD, weight_VD, ids_BL, masked_BL, w_BL = _loss_inputs(2)
    masked_BL = torch.zeros_like(masked_BL)
    loss, num_masked = masked_diffusion_loss(hidden_BLD, weight_VD, ids_BL, masked_BL, w_BL * 0)
    assert num_masked == 0 and loss.item() == 0.0
    loss.backward()
    assert weight_VD.grad is not None and (weight_VD.grad == 0).all()


def test_masked_loss_keeps_no_full_logits_for_backward():
    # With per-chunk checkpointing nothing of size chunk×V (or N×V) is saved for backward.
    g = _gen(3)
    num_rows, length, hidden, vocab, chunk = 2, 64, 4, 1000, 8
    hidden_BLD = torch.randn(num_rows, length, hidden, generator=g).requires_grad_()
    weight_VD = torch.randn(vocab, hidden, generator=g).requires_grad_()
    ids_BL = torch.randint(0, vocab, (num_rows, length), generator=g)
    masked_BL = torch.ones(num_rows, length, dtype=torch.bool)
    masked_BL[:, 0] = False
    saved_numels = []

    def pack(x):
        saved_numels.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss, _ = masked_diffusion_loss(hidden_BLD, weight_VD, ids_BL, masked_BL, masked_BL.float(), chunk_size=chunk)
    loss.backward()
    assert max(saved_numels) < chunk * vocab, max(saved_numels)


# ---------------------------------------------------------------- per-batch cut-off


# prompt ++ response ++ EOS(=PAD) ++ pads
ROWS_BL = torch.tensor(
    [
        [11, 12, 21, 22, 23, PAD, PAD, PAD],  # prompt 2, response 3
        [31, 32, 33, 41, PAD, PAD, PAD, PAD],  # prompt 3, response 1
        [51, 61, 62, PAD, PAD, PAD, PAD, PAD],  # prompt 1, response 2
    ]
)
PROMPT_LENGTHS_B = torch.tensor([2, 3, 1])
RESPONSE_LENGTHS_B = torch.tensor([3, 1, 2])
T, F_ = True, False

# P = 3; one expected batch per drawn K (written out by hand).
EXPECTED_CUTOFF = {
    1: {
        "input_ids_BL": [[PAD, 11, 12, 21], [31, 32, 33, 41], [PAD, PAD, 51, 61]],
        "attention_mask_BL": [[F_, T, T, T], [T, T, T, T], [F_, F_, T, T]],
        "loss_mask_BL": [[F_, F_, F_, T]] * 3,
        "position_ids_BL": [[0, 0, 1, 2], [0, 1, 2, 3], [0, 0, 0, 1]],
    },
    2: {
        "input_ids_BL": [[PAD, 11, 12, 21, 22], [31, 32, 33, 41, PAD], [PAD, PAD, 51, 61, 62]],
        "attention_mask_BL": [[F_, T, T, T, T], [T, T, T, T, T], [F_, F_, T, T, T]],
        "loss_mask_BL": [[F_, F_, F_, T, T]] * 3,
        "position_ids_BL": [[0, 0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 0, 0, 1, 2]],
    },
    3: {
        "input_ids_BL": [[PAD, 11, 12, 21, 22, 23], [31, 32, 33, 41, PAD, PAD], [PAD, PAD, 51, 61, 62, PAD]],
        "attention_mask_BL": [[F_, T, T, T, T, T], [T, T, T, T, T, T], [F_, F_, T, T, T, T]],
        "loss_mask_BL": [[F_, F_, F_, T, T, T]] * 3,
        "position_ids_BL": [[0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]],
    },
}


def test_cutoff_random_with_input_pad_hand_written():
    seen = set()
    for seed in range(40):
        out = cutoff_random_with_input_pad(
            ROWS_BL, PROMPT_LENGTHS_B, RESPONSE_LENGTHS_B, pad_id=PAD, generator=_gen(seed)
        )
        k = out["input_ids_BL"].shape[1] - 3
        seen.add(k)
        expected = EXPECTED_CUTOFF[k]
        assert set(out) == set(expected)
        for key, value in expected.items():
            assert out[key].tolist() == value, (k, key)
        assert out["attention_mask_BL"].dtype == torch.bool and out["loss_mask_BL"].dtype == torch.bool
    assert seen == {1, 2, 3}


def test_cutoff_random_with_input_pad_deterministic():
    a = cutoff_random_with_input_pad(ROWS_BL, PROMPT_LENGTHS_B, RESPONSE_LENGTHS_B, pad_id=PAD, generator=_gen(5))
    b = cutoff_random_with_input_pad(ROWS_BL, PROMPT_LENGTHS_B, RESPONSE_LENGTHS_B, pad_id=PAD, generator=_gen(5))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cutoff_random_rows_with_short_response_end_with_eos():
    g = _gen(0)
    num_rows, width = 16, 40
    prompt_B = torch.randint(1, 10, (num_rows,), generator=g)
    response_B = torch.randint(0, 25, (num_rows,), generator=g)
    rows_BL = torch.full((num_rows, width), PAD)
    for b in range(num_rows):
        n = int(prompt_B[b] + response_B[b])
        rows_BL[b, :n] = torch.randint(100, 200, (n,), generator=g)
    for seed in range(20):
        out = cutoff_random_with_input_pad(rows_BL, prompt_B, response_B, pad_id=PAD, generator=_gen(seed))
        num_prompt = int(prompt_B.max())
        k = out["input_ids_BL"].shape[1] - num_prompt
        assert k in response_B.tolist()
        for b in range(num_rows):
            row = out["input_ids_BL"][b]
            pl, rl = int(prompt_B[b]), int(response_B[b])
            assert row[num_prompt - pl : num_prompt].tolist() == rows_BL[b, :pl].tolist()
            kept = min(k, rl)
            assert row[num_prompt : num_prompt + kept].tolist() == rows_BL[b, pl : pl + kept].tolist()
            if rl < k:
                assert (row[num_prompt + rl :] == PAD).all()
            else:
                assert (row[num_prompt:] != PAD).all()  # cut without EOS
        # first real token of every row sits at position 0, positions increase by one after it
        first_B = num_prompt - prompt_B
        pos_BL = out["position_ids_BL"]
        assert (pos_BL.gather(1, first_B[:, None]) == 0).all()
        assert (pos_BL[:, -1] == num_prompt + k - 1 - first_B).all()


def test_cutoff_none_hand_written():
    out = cutoff_none(ROWS_BL, PROMPT_LENGTHS_B, RESPONSE_LENGTHS_B, pad_id=PAD)
    assert out["input_ids_BL"].tolist() == [
        [11, 12, 21, 22, 23, PAD],
        [31, 32, 33, 41, PAD, PAD],
        [51, 61, 62, PAD, PAD, PAD],
    ]
    assert out["attention_mask_BL"].tolist() == [[T] * 6] * 3
    assert out["loss_mask_BL"].tolist() == [
        [F_, F_, T, T, T, T],
        [F_, F_, F_, T, T, T],
        [F_, T, T, T, T, T],
    ]
    assert out["position_ids_BL"].tolist() == [list(range(6))] * 3

"""Directions (``reversion.core.directions``): planted directions with known answers, the
layer-stability bootstrap, the layer rule, save/load and the vocabulary readout.

Every direction here is planted so that the right answer is known exactly:

* a vector ``delta`` added to one block's MLP output bias shifts the residual stream of
  every token by exactly ``delta`` after that block, so ``mu_H - mu_S = delta`` there;
* identical checkpoints have no direction at all (an error, not a NaN);
* the layer rule is fed invented profiles whose answer is read off by eye;
* the vocabulary readout is checked against the models' own final norm and unembedding.

Activations are computed one model at a time (``prompt_activations``) and the directions
from them (``directions_from_acts``), as the estimate stage does; :func:`estimate_directions`
below is that pipeline on in-memory models. The tiny models are random and untrained.
Alignment of drift with a direction is ``test_drift.py``; the organism's estimate stage
``test_estimate.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from reversion.core import stats
from reversion.core.activations import prompt_activations
from reversion.core.directions import (
    Directions,
    directions_from_acts,
    layer_stability,
    logit_lens,
    select_layer,
    unit_rows,
)

# One torch thread and the determinism flags restored afterwards (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, D, L = 40, 32, 3


def tiny_gpt2(seed: int = 0, n_embd: int = D, n_layer: int = L) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=n_embd, n_layer=n_layer, n_head=2,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=1, eos_token_id=3, pad_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=3, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def tiny_gemma(seed: int = 0) -> GemmaForCausalLM:
    torch.manual_seed(seed)
    cfg = GemmaConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=16, bos_token_id=1, eos_token_id=3, pad_token_id=0)
    return GemmaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    """Prompts of different lengths (so right padding is exercised), ids 1..VOCAB-1."""
    g = np.random.default_rng(0)
    return [g.integers(1, VOCAB, size=int(n)).tolist() for n in g.integers(2, 9, size=12)]


@pytest.fixture(scope="module")
def delta() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return 0.7 * torch.randn(D, generator=g)


def plant(base: GPT2LMHeadModel, block: int, delta: torch.Tensor) -> GPT2LMHeadModel:
    """A copy of ``base`` whose block ``block`` adds ``delta`` to every token's residual stream."""
    theta_H = copy.deepcopy(base)
    with torch.no_grad():
        theta_H.transformer.h[block].mlp.c_proj.bias += delta
    return theta_H


def blind_blocks_from(model: GPT2LMHeadModel, first: int) -> GPT2LMHeadModel:
    """Zero the LayerNorm gains of blocks ``first..L-1``: their attention and MLP then add the
    same constant to every token whatever it is, so a shift of the residual stream entering
    them passes through unchanged (up to float rounding)."""
    with torch.no_grad():
        for blk in model.transformer.h[first:]:
            blk.ln_1.weight.zero_()
            blk.ln_2.weight.zero_()
    return model


def estimate_directions(theta_H, theta_S, harmful, *, theta_P=None, harmless=None, position="last"):
    """The estimate stage's arithmetic on in-memory models: per-model activations of the
    prompts at every layer, then :func:`directions_from_acts`. Returns ``(directions, acts)``."""
    kw = dict(layers="all", position=position)
    acts = {"H": prompt_activations(theta_H, harmful, **kw), "S": prompt_activations(theta_S, harmful, **kw)}
    if theta_P is not None:
        acts["P"] = prompt_activations(theta_P, harmful, **kw)
    if harmless:
        acts["S_harmless"] = prompt_activations(theta_S, harmless, **kw)
    return directions_from_acts(acts, {"position": position}), acts


# --------------------------------------------------------------------------- planted v_rev


def test_planted_shift_is_recovered_exactly_at_every_layer_it_reaches(prompts, delta):
    base = blind_blocks_from(tiny_gpt2(), 1)
    theta_H = plant(base, 0, delta)  # hidden_states[1] and [2] shift by exactly delta
    dirs, acts = estimate_directions(theta_H, base, prompts)
    u = delta.double() / delta.double().norm()
    for layer in (1, 2):
        torch.testing.assert_close(dirs.v_rev[layer], u, atol=1e-6, rtol=0)
        assert dirs.displacement_norm[layer].item() == pytest.approx(delta.norm().item(), rel=1e-6)
        # every prompt moved by delta, not only the mean
        torch.testing.assert_close(acts["H"][:, layer] - acts["S"][:, layer],
                                   delta.double().expand(len(prompts), D), atol=1e-6, rtol=0)
    # layer 0 (embeddings) is untouched: exempt from the zero-norm error, stays a zero row
    assert dirs.displacement_norm[0].item() == 0.0
    assert torch.count_nonzero(dirs.v_rev[0]) == 0
    # layer L is after the final LayerNorm: moved, but not by a plain shift
    assert dirs.v_rev[L].norm().item() == pytest.approx(1.0, abs=1e-9)
    assert dirs.displacement_norm[L] > 0
    # activation scale and bookkeeping
    torch.testing.assert_close(dirs.activation_norm, acts["S"].norm(dim=-1).mean(0))
    assert dirs.v_P is None and dirs.r_S is None
    assert dirs.meta["n_prompts"] == len(prompts) and dirs.meta["position"] == "last"
    assert dirs.meta["layer"] is None


def test_planted_shift_in_a_generic_model_is_exact_right_after_the_block(prompts, delta):
    base = tiny_gpt2(seed=3)
    dirs, _ = estimate_directions(plant(base, 0, delta), base, prompts)
    u = delta.double() / delta.double().norm()
    torch.testing.assert_close(dirs.v_rev[1], u, atol=1e-6, rtol=0)
    assert dirs.displacement_norm[1].item() == pytest.approx(delta.norm().item(), rel=1e-6)
    # later blocks read the shifted stream through their LayerNorms: no longer exactly delta,
    # by far more than the tolerance that layer 1 meets
    assert (dirs.v_rev[2] - u).abs().max() > 1e-4
    assert torch.allclose(dirs.v_rev[1:].norm(dim=-1), torch.ones(L, dtype=torch.float64))


def test_planted_shift_deeper_raises_on_the_untouched_layers_before_it(prompts, delta):
    base = blind_blocks_from(tiny_gpt2(), 2)
    theta_H = plant(base, 1, delta)  # l = 2: hidden_states[0] and [1] are identical
    with pytest.raises(ValueError, match=r"zero-norm displacement at layer\(s\) \[1\]"):
        estimate_directions(theta_H, base, prompts)
    # Allowing layer 1 as well, the same difference of means gives the exact direction at 2.
    diff = prompt_activations(theta_H, prompts, "all").mean(0) - prompt_activations(base, prompts, "all").mean(0)
    v, norms = unit_rows(diff, "v_rev", allow_zero=(0, 1))
    torch.testing.assert_close(v[2], delta.double() / delta.double().norm(), atol=1e-6, rtol=0)
    assert norms[2].item() == pytest.approx(delta.norm().item(), rel=1e-6)
    assert norms[0].item() == 0.0 and norms[1].item() == 0.0
    assert torch.count_nonzero(v[:2]) == 0


def test_witness_equal_to_helpful_model_gives_v_P_equal_to_v_rev(prompts, delta):
    base = tiny_gpt2(seed=4)
    theta_H = plant(base, 0, delta)
    dirs, acts = estimate_directions(theta_H, base, prompts, theta_P=theta_H)
    torch.testing.assert_close(dirs.v_P, dirs.v_rev, atol=1e-12, rtol=0)
    assert set(acts) == {"H", "S", "P"}


def test_refusal_direction_of_identical_prompt_sets_is_an_error(prompts, delta):
    base = tiny_gpt2(seed=4)
    with pytest.raises(ValueError, match="r_S.*zero-norm"):
        estimate_directions(plant(base, 0, delta), base, prompts, harmless=list(prompts))


def test_refusal_direction_from_distinct_prompt_sets(prompts, delta):
    base = tiny_gpt2(seed=4)
    harmless = [[(t % (VOCAB - 1)) + 1 for t in p[::-1]] for p in prompts]
    dirs, acts = estimate_directions(plant(base, 0, delta), base, prompts, harmless=harmless)
    expected = acts["S"].mean(0) - acts["S_harmless"].mean(0)
    torch.testing.assert_close(dirs.r_S[1:], expected[1:] / expected[1:].norm(dim=-1, keepdim=True))


def test_identical_checkpoints_have_no_direction(prompts):
    base = tiny_gpt2()
    with pytest.raises(ValueError, match="zero-norm"):
        estimate_directions(copy.deepcopy(base), base, prompts)


MISMATCH = r"differ in layer count \(num_hidden_layers\) or width \(hidden_size\)"


def test_models_of_different_width_are_rejected(prompts):
    with pytest.raises(ValueError, match=MISMATCH):
        estimate_directions(tiny_gpt2(n_embd=32), tiny_gpt2(n_embd=16), prompts)
    with pytest.raises(ValueError, match=MISMATCH):
        estimate_directions(tiny_gpt2(), tiny_gpt2(), prompts, theta_P=tiny_gpt2(n_embd=16))


def test_models_of_different_depth_are_rejected(prompts):
    with pytest.raises(ValueError, match=MISMATCH):
        estimate_directions(tiny_gpt2(n_layer=3), tiny_gpt2(n_layer=2), prompts)
    with pytest.raises(ValueError, match=MISMATCH):
        estimate_directions(tiny_gpt2(n_layer=3), tiny_gpt2(n_layer=3), prompts, theta_P=tiny_gpt2(n_layer=2))


def test_empty_prompts_are_rejected():
    base = tiny_gpt2()
    with pytest.raises(ValueError, match="empty"):
        estimate_directions(base, base, [])
    # and activations of no prompt at all, should they reach the arithmetic
    none = torch.zeros(0, L + 1, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="harmful probe prompt set is empty"):
        directions_from_acts({"H": none, "S": none})


def _acts(n: int, seed: int, layers: int = L + 1, d: int = D) -> torch.Tensor:
    return torch.randn(n, layers, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_directions_from_acts_is_the_normalized_difference_of_means():
    """Known answer on invented activations: v_rev, v_P, r_S are the normalized differences of
    the means, the displacement is the norm of mu_H - mu_S, the activation norm theta_S's mean
    per-prompt norm; metadata passes through with the prompt count."""
    H, S, P, Sh = _acts(5, 0), _acts(5, 1), _acts(5, 2), _acts(7, 3)
    dirs = directions_from_acts({"H": H, "S": S, "P": P, "S_harmless": Sh}, {"position": "mean", "x": 1})
    diff = H.mean(0) - S.mean(0)
    torch.testing.assert_close(dirs.v_rev, diff / diff.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(dirs.displacement_norm, diff.norm(dim=-1))
    vp = P.mean(0) - S.mean(0)
    torch.testing.assert_close(dirs.v_P, vp / vp.norm(dim=-1, keepdim=True))
    rs = S.mean(0) - Sh.mean(0)       # harmless prompts may be as many as they like
    torch.testing.assert_close(dirs.r_S, rs / rs.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(dirs.activation_norm, S.norm(dim=-1).mean(0))
    assert dirs.meta == {"n_prompts": 5, "position": "mean", "x": 1, "layer": None}
    assert directions_from_acts({"H": H, "S": S}, {"layer": 2}).layer == 2   # a given layer is kept


def test_directions_from_acts_refuses_incomplete_or_unpaired_activations():
    H, S = _acts(5, 0), _acts(5, 1)
    for missing in ({"H": H}, {"S": S}, {"H": H, "P": S}):
        with pytest.raises(ValueError, match="missing: v_rev needs both H and S"):
            directions_from_acts(missing)
    with pytest.raises(ValueError, match="same probe prompts"):
        directions_from_acts({"H": H, "S": _acts(4, 1)})
    with pytest.raises(ValueError, match="same probe prompts"):
        directions_from_acts({"H": H, "S": S, "P": _acts(6, 2)})
    with pytest.raises(ValueError, match=MISMATCH):
        directions_from_acts({"H": H, "S": S[:, 0]})  # not [n, L+1, d]
    nan = S.clone()
    nan[:, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values .* layer\(s\) \[2\]"):
        directions_from_acts({"H": H, "S": nan})


def test_unit_rows_exempts_only_the_layers_it_is_told():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"layer\(s\) \[2\]"):
        unit_rows(x, "demo")
    v, n = unit_rows(x, "demo", allow_zero=(0, 2))
    torch.testing.assert_close(v, torch.tensor([[0.0, 0.0], [0.6, 0.8], [0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(n, torch.tensor([0.0, 5.0, 0.0], dtype=torch.float64))
    assert torch.isfinite(v).all()


# --------------------------------------------------------------------------- layer stability


def test_layer_stability_of_a_planted_shift_is_one_where_it_acts_and_zero_where_nothing_moved(prompts, delta):
    base = blind_blocks_from(tiny_gpt2(), 1)
    _, acts = estimate_directions(plant(base, 0, delta), base, prompts)
    stab = layer_stability(acts["H"], acts["S"], 25, np.random.default_rng(0))
    assert stab.shape == (25, L + 1) and np.isfinite(stab).all()
    # every prompt moved by exactly delta at layers 1 and 2: every half agrees
    np.testing.assert_allclose(stab[:, 1:3], 1.0, atol=1e-9)
    # the embeddings did not move: 0 (never NaN, so the layer rule never takes it for stable)
    assert np.all(stab[:, 0] == 0.0)
    assert np.all(np.abs(stab[:, L]) <= 1.0)


def test_layer_stability_without_a_direction_is_noise_and_with_one_is_high():
    """Null: H and S independent draws of the same distribution give cosines spread about 0
    (~1/sqrt(d)); planted: the same noise plus a shift of 3x the per-prompt noise per
    coordinate gives halves that agree."""
    n, d = 40, 64
    g = torch.Generator().manual_seed(0)
    S = torch.randn(n, 3, d, generator=g, dtype=torch.float64)
    H = torch.randn(n, 3, d, generator=g, dtype=torch.float64)
    shift = torch.zeros(3, d, dtype=torch.float64)
    shift[2] = 3.0 * torch.randn(d, generator=g, dtype=torch.float64)
    stab = layer_stability(H + shift, S, 200, np.random.default_rng(1))
    assert abs(stab[:, 1].mean()) < 0.1 and stab[:, 1].std() < 0.3        # no direction
    assert stab[:, 2].mean() > 0.95                                       # planted
    # column l is the split-half stability at layer l, drawn layer after layer from one generator
    gen = np.random.default_rng(1)
    for layer in range(3):
        want = stats.split_half_stability(H[:, layer] + shift[layer], S[:, layer], 200, gen)
        np.testing.assert_array_equal(stab[:, layer], want)


# --------------------------------------------------------------------------- save / load


def _directions(meta: dict, with_controls: bool = True) -> Directions:
    g = torch.Generator().manual_seed(0)
    rows = lambda: torch.nn.functional.normalize(torch.randn(L + 1, D, generator=g, dtype=torch.float64), dim=-1)  # noqa: E731
    return Directions(rows(), rows() if with_controls else None, rows() if with_controls else None,
                      torch.rand(L + 1, generator=g, dtype=torch.float64),
                      torch.rand(L + 1, generator=g, dtype=torch.float64), meta)


def test_directions_round_trip_keeps_tensors_and_metadata(tmp_path):
    meta = {"layer": 2, "position": "last", "n_prompts": 12, "layer_reason": "layer 2: because",
            "checkpoints": {"theta_H": "/x/H/model", "theta_S": "/x/S/model", "theta_P": "/x/P/model"}}
    d = _directions(meta)
    path = d.save(tmp_path / "sub" / "v_rev.safetensors")
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))
    back = Directions.load(path)
    for name in ("v_rev", "v_P", "r_S", "displacement_norm", "activation_norm"):
        assert torch.equal(getattr(back, name), getattr(d, name)), name
        assert getattr(back, name).dtype == torch.float64
    assert back.meta == meta
    assert back.layer == 2 and isinstance(back.layer, int)


def test_directions_round_trip_without_controls(tmp_path):
    d = _directions({"layer": None, "position": "mean"}, with_controls=False)
    back = Directions.load(d.save(tmp_path / "v.safetensors"))
    assert back.v_P is None and back.r_S is None
    assert torch.equal(back.v_rev, d.v_rev)
    assert back.meta == {"layer": None, "position": "mean"}


def test_loading_a_missing_direction_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no direction file"):
        Directions.load(tmp_path / "absent.safetensors")


# --------------------------------------------------------------------------- layer rule


def test_select_layer_takes_the_stable_layer_with_the_largest_relative_displacement():
    #                     0     1     2     3     4
    disp = np.array([9.0, 1.0, 3.0, 2.0, 50.0])
    act = np.array([1.0, 1.0, 2.0, 1.0, 1.0])   # relative: 9, 1, 1.5, 2, 50
    stab = np.array([1.0, 0.99, 0.95, 0.97, 1.0])
    layer, reason = select_layer(disp, act, stab, 0.9)
    assert layer == 3                          # 0 and L never, although they lead on both counts
    assert reason.startswith("layer 3:") and "largest relative displacement" in reason
    # the relative, not the absolute, displacement decides
    assert select_layer(disp, np.array([1.0, 1.0, 1.0, 1.0, 1.0]), stab, 0.9)[0] == 2


def test_select_layer_skips_unstable_layers():
    disp = np.array([1.0, 1.0, 5.0, 2.0, 1.0])
    act = np.ones(5)
    stab = np.array([1.0, 0.95, 0.5, 0.92, 1.0])  # layer 2 leads but is unstable
    assert select_layer(disp, act, stab, 0.9)[0] == 3
    # stability exactly at the threshold counts as stable
    stab[2] = 0.9
    assert select_layer(disp, act, stab, 0.9)[0] == 2


def test_select_layer_falls_back_to_the_most_stable_intermediate_layer():
    disp = np.array([1.0, 5.0, 1.0, 2.0, 1.0])
    act = np.ones(5)
    stab = np.array([0.99, 0.2, 0.6, 0.4, 0.99])
    layer, reason = select_layer(disp, act, stab, 0.9)
    assert layer == 2
    assert "no intermediate layer reached stability" in reason and reason.startswith("layer 2:")


def test_select_layer_with_one_block_has_no_intermediate_layer():
    disp, act = np.array([1.0, 3.0]), np.ones(2)
    assert select_layer(disp, act, np.array([0.95, 0.95]), 0.9)[0] == 1
    assert select_layer(disp, act, np.array([0.5, 0.3]), 0.9)[0] == 0


# --------------------------------------------------------------------------- logit lens


def _rand(n: int, seed: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _set_norm(norm: torch.nn.Module, seed: int, bias: bool) -> torch.Tensor:
    with torch.no_grad():
        norm.weight.copy_(_rand(D, seed, 0.3, 2.0))
        if bias:
            norm.bias.copy_(_rand(D, seed + 1, -1.0, 1.0))
    return norm.weight.detach().clone()


def test_logit_lens_gpt2_centres_and_scales_without_the_bias():
    model = tiny_gpt2()
    gamma = _set_norm(model.transformer.ln_f, 11, bias=True).double()
    W_U = model.lm_head.weight.detach().double()
    v = torch.randn(D, generator=torch.Generator().manual_seed(12), dtype=torch.float64) + 0.5
    expected = W_U @ (gamma * (v - v.mean()))
    got = logit_lens(model, v)
    assert got.shape == (VOCAB,) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the centring matters for this v, and the bias is not folded in
    assert (W_U @ (gamma * v) - expected).abs().max() > 1e-2
    assert (W_U @ (gamma * (v - v.mean()) + model.transformer.ln_f.bias.double()) - expected).abs().max() > 1e-2
    # a constant direction is invisible to a LayerNorm: it reads out nothing
    torch.testing.assert_close(logit_lens(model, torch.ones(D)), torch.zeros(VOCAB, dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_logit_lens_llama_scales_without_centring():
    model = tiny_llama()
    gamma = _set_norm(model.model.norm, 13, bias=False).double()
    W_U = model.lm_head.weight.detach().double()
    v = torch.randn(D, generator=torch.Generator().manual_seed(14), dtype=torch.float64) + 0.5
    torch.testing.assert_close(logit_lens(model, v), W_U @ (gamma * v), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logit_lens(model, torch.ones(D)), W_U @ gamma, atol=1e-5, rtol=1e-5)
    assert (W_U @ gamma).abs().max() > 1e-2


def test_logit_lens_gemma_uses_one_plus_weight():
    model = tiny_gemma()
    w = _set_norm(model.model.norm, 15, bias=False).double()
    W_U = model.lm_head.weight.detach().double()
    v = torch.randn(D, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    torch.testing.assert_close(logit_lens(model, v), W_U @ ((1.0 + w) * v), atol=1e-5, rtol=1e-5)
    assert (W_U @ (w * v) - W_U @ ((1.0 + w) * v)).abs().max() > 1e-2


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma"])
def test_logit_lens_matches_the_models_own_final_norm_and_unembedding(family):
    """Independent of the formula: feeding ``v`` itself through the model's final norm and
    unembedding gives the readout up to the norm's positive scale 1/sigma, plus W_U @ bias."""
    model = {"gpt2": tiny_gpt2, "llama": tiny_llama, "gemma": tiny_gemma}[family](seed=5)
    norm = model.transformer.ln_f if family == "gpt2" else model.model.norm
    _set_norm(norm, 17, bias=family == "gpt2")
    W_U = model.lm_head.weight.detach().double()
    v = torch.randn(D, generator=torch.Generator().manual_seed(18), dtype=torch.float64) * 3 + 1
    with torch.no_grad():
        out = model.lm_head(norm(v.float()[None, None]))[0, 0].double()
    if family == "gpt2":
        out = out - W_U @ norm.bias.detach().double()
        sigma = torch.sqrt(v.var(unbiased=False) + norm.eps)
    else:
        eps = norm.eps if hasattr(norm, "eps") else norm.variance_epsilon
        sigma = torch.sqrt((v ** 2).mean() + eps)
    torch.testing.assert_close(logit_lens(model, v), out * sigma, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_direction_along_one_tokens_unembedding_reads_out_that_token(family):
    model = tiny_gpt2() if family == "gpt2" else tiny_llama()
    norm = model.transformer.ln_f if family == "gpt2" else model.model.norm
    gamma = _set_norm(norm, 19, bias=family == "gpt2").double()
    g = torch.Generator().manual_seed(20)
    # Unembedding rows of equal norm; for GPT-2 also orthogonal to gamma, so the LayerNorm's
    # centring (which subtracts a multiple of gamma after scaling) cannot favour any token.
    rows = torch.randn(VOCAB, D, generator=g, dtype=torch.float64)
    if family == "gpt2":
        gh = gamma / gamma.norm()
        rows = rows - (rows @ gh)[:, None] * gh
    rows = rows / rows.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        model.lm_head.weight.copy_(rows.float())
    for k in (4, 17, VOCAB - 1):
        v = rows[k] / gamma  # undo the norm's per-channel gain
        logits = logit_lens(model, v)
        assert int(logits.argmax()) == k
        top2 = torch.topk(logits, 2).values
        assert top2[0] - top2[1] > 1e-2
        assert int(logit_lens(model, -v).argmin()) == k

"""The estimate stage (``reversion.stages.estimate``) on the organism's ``smoke`` world: v_rev
and its controls from the subject's checkpoints, the split-half stability, the layer chosen by
rule, and the cache.

The smoke world trains in seconds in a temporary cache (``isolated``); its numbers mean
nothing, so what is checked is that the stored pieces are consistent with each other (the
direction is the normalized difference of the stored activations' means, the layer is the
rule applied to the stored profile, a cached entry equals a fresh measurement) and that bad
arguments fail before any work.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reversion.core.directions import logit_lens, select_layer
from reversion.stages import estimate as estimate_mod
from reversion.stages.estimate import estimate, measure, stability_vs_probes, summary
from reversion.stages.readout import readout
from reversion.subjects.organism.subject import OrganismSubject
from reversion.subjects.organism.worlds import make_world

# One torch thread and the determinism flags restored afterwards (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

N_PROBE, N_BOOT = 16, 12


@pytest.fixture
def subject(isolated) -> OrganismSubject:
    return OrganismSubject(make_world("smoke").history)


def _same_directions(a, b) -> None:
    for name in ("v_rev", "v_P", "r_S", "displacement_norm", "activation_norm"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.meta == b.meta


def test_estimate_on_the_smoke_world_is_cached_and_picks_an_intermediate_layer(subject, isolated, monkeypatch):
    est = estimate(subject, n_probe=N_PROBE, n_boot=N_BOOT, progress=False)
    Lw, d = subject.history.model.n_layer, subject.history.model.n_embd
    assert isolated / "cache" / "estimate" in est.path.parents
    assert 1 <= est.layer <= Lw - 1
    assert est.stability.shape == (N_BOOT, Lw + 1)
    assert np.all(np.abs(est.stability) <= 1.0)
    assert est.directions.v_rev.shape == (Lw + 1, d)
    assert torch.allclose(est.directions.v_rev[1:].norm(dim=-1), torch.ones(Lw, dtype=torch.float64))
    for k in ("H", "S", "P", "S_harmless"):
        assert est.acts[k].shape == (N_PROBE, Lw + 1, d)
    # the stored directions are the normalized differences of the stored activations' means
    diff = est.acts["H"].mean(0) - est.acts["S"].mean(0)
    torch.testing.assert_close(est.directions.v_rev[1:], diff[1:] / diff[1:].norm(dim=-1, keepdim=True))
    vp = est.acts["P"].mean(0) - est.acts["S"].mean(0)
    torch.testing.assert_close(est.directions.v_P[1:], vp[1:] / vp[1:].norm(dim=-1, keepdim=True))
    rs = est.acts["S"].mean(0) - est.acts["S_harmless"].mean(0)
    torch.testing.assert_close(est.directions.r_S[1:], rs[1:] / rs[1:].norm(dim=-1, keepdim=True))
    # the stored layer is the rule applied to the stored profile
    assert est.layer == select_layer(est.directions.displacement_norm.numpy(),
                                     est.directions.activation_norm.numpy(), est.stability.mean(0))[0]
    assert est.directions.meta["layer_reason"].startswith(f"layer {est.layer}:")
    # the direction file says what it was estimated on
    assert {k: est.directions.meta[k] for k in ("model_type", "hidden_size", "num_hidden_layers")} == subject.arch()
    assert est.directions.meta["position"] == "last" and est.directions.meta["n_prompts"] == N_PROBE
    # one witness opener per estimation prompt, each a token of the language
    assert len(est.openers) == N_PROBE
    assert all(0 <= t < subject.language.vocab_size for t in est.openers)

    def no_rebuild(*a, **k):
        raise AssertionError("estimate recomputed a cached entry")

    monkeypatch.setattr(estimate_mod, "measure", no_rebuild)
    again = estimate(subject, n_probe=N_PROBE, n_boot=N_BOOT, progress=False)
    assert again.path == est.path
    assert again.layer == est.layer
    _same_directions(again.directions, est.directions)
    assert np.array_equal(again.stability, est.stability)
    assert again.openers == est.openers
    assert all(torch.equal(again.acts[k], est.acts[k]) for k in est.acts)


def test_a_cached_estimate_equals_a_fresh_measurement(subject):
    est = estimate(subject, n_probe=N_PROBE, n_boot=N_BOOT, progress=False)
    fresh = measure(subject, N_PROBE, n_boot=N_BOOT, meta=subject.arch())
    assert fresh.path is None
    _same_directions(fresh.directions, est.directions)
    assert np.array_equal(fresh.stability, est.stability)   # the bootstrap is seeded by the subject
    assert fresh.openers == est.openers
    # another probe count is another entry
    other = estimate(subject, n_probe=N_PROBE + 4, n_boot=N_BOOT, progress=False)
    assert other.path != est.path and other.acts["H"].shape[0] == N_PROBE + 4


@pytest.mark.parametrize("kwargs, match", [
    ({"n_boot": 1}, "n_boot must be an int >= 2"),
    ({"n_boot": 2.5}, "n_boot must be an int >= 2"),
    ({"position": "first"}, "position must be one of"),
    ({"min_stability": 1.0}, r"min_stability must be a finite number in \(0, 1\), got 1\.0"),
])
def test_bad_arguments_are_refused_before_any_work(subject, isolated, kwargs, match):
    with pytest.raises(ValueError, match=match):
        estimate(subject, n_probe=N_PROBE, **{"n_boot": N_BOOT, **kwargs}, progress=False)
    assert not (isolated / "cache").exists()   # no history trained, nothing written


def test_stability_vs_probes_and_summary(subject):
    est = estimate(subject, n_probe=N_PROBE, n_boot=N_BOOT, progress=False)
    layer = est.layer
    by_n = stability_vs_probes(est, layer, [4, 8, N_PROBE], n_boot=20)
    assert list(by_n) == [4, 8, N_PROBE]
    assert all(set(v) == {"mean", "std", "n"} and v["n"] == 20 and -1 <= v["mean"] <= 1 for v in by_n.values())
    assert stability_vs_probes(est, layer, [8], n_boot=20) == stability_vs_probes(est, layer, [8], n_boot=20)
    for bad in (3, N_PROBE + 1):
        with pytest.raises(ValueError, match="probe subset size"):
            stability_vs_probes(est, layer, [bad], n_boot=20)
    s = summary(est)
    assert s["layer"] == layer and s["reason"] == est.directions.meta["layer_reason"]
    assert [r["layer"] for r in s["rows"]] == list(range(subject.history.model.n_layer + 1))
    row = s["rows"][layer]
    d = est.directions
    assert row["displacement"] == pytest.approx(float(d.displacement_norm[layer]))
    assert row["relative displacement"] == pytest.approx(float(d.displacement_norm[layer] / d.activation_norm[layer]))
    assert row["stability mean"] == pytest.approx(float(est.stability[:, layer].mean()))
    assert row["cos(v_rev, v_P)"] == pytest.approx(float(d.v_rev[layer] @ d.v_P[layer]))
    assert row["cos(v_rev, r_S)"] == pytest.approx(float(d.v_rev[layer] @ d.r_S[layer]))


def test_readout_of_the_estimate_is_the_logit_lens_of_its_directions(subject):
    est = estimate(subject, n_probe=N_PROBE, n_boot=N_BOOT, progress=False)
    out = readout(subject, est, top_k=5)
    assert set(out) == {"v_rev", "-r_S", "v_P", "random"}  # v_rev and every control direction
    lang = subject.language
    model = subject.load("theta_S", device="cpu")
    again = readout(subject, est, top_k=5)
    assert again["random"] == out["random"]  # the random direction is drawn from the subject's seed
    for label, vec in (("v_rev", est.directions.v_rev[est.layer]), ("-r_S", -est.directions.r_S[est.layer]),
                       ("v_P", est.directions.v_P[est.layer])):
        logits = logit_lens(model, vec).numpy()
        top = out[label]["top"]
        assert len(top) == len(out[label]["bottom"]) == 5
        assert [v for _, v in top] == pytest.approx(sorted(logits, reverse=True)[:5])
        assert [v for _, v in out[label]["bottom"]] == pytest.approx(sorted(logits)[:5])
        assert all(name == lang.token_names[int(np.flatnonzero(logits == v)[0])] for name, v in top)
        openers = np.concatenate([lang.content, lang.harmful_tokens])
        assert out[label]["compliance_minus_refusal"] == pytest.approx(
            float(logits[openers].mean() - logits[lang.refusal[0]]))
        assert out[label]["harmful_minus_refusal"] == pytest.approx(
            float(logits[lang.harmful_tokens].mean() - logits[lang.refusal[0]]))
    with pytest.raises(ValueError, match="top_k"):
        readout(subject, est, top_k=0)

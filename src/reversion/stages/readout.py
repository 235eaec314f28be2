"""Stage ``readout``: what a direction says in the vocabulary (the paper's v2 readout).

The logit lens of v_rev (and of the control directions: -r_S and v_P where they exist, and a
random unit direction drawn from the subject's seed) through theta_S's final norm and
unembedding at the chosen layer (:func:`reversion.core.directions.logit_lens`): the top
and bottom tokens, and the mean logit of the tokens that open a compliant answer minus
the logit of the refusal's first token (> 0: the direction favours answering). Which
tokens those are is the subject's to say (:meth:`~reversion.subjects.base.Subject.vocabulary`).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from reversion.core.directions import logit_lens
from reversion.infra import seeding
from reversion.infra.checks import check_int
from reversion.infra.runtime import free_memory
from reversion.subjects.base import Subject

__all__ = ["readout"]


def readout(subject: Subject, est, top_k: int) -> dict:
    """``{"v_rev": ..., "-r_S": ..., "v_P": ..., "random": ...}``, each with ``top`` / ``bottom`` (token, logit) lists,
    ``compliance_minus_refusal`` (None without openers) and ``harmful_minus_refusal`` (None
    where the subject knows no harmful tokens)."""
    check_int("top_k", top_k, 1)
    vocab = subject.vocabulary(est.openers)
    model = subject.load("theta_S")
    layer = est.layer
    vecs = {"v_rev": est.directions.v_rev[layer]}
    if est.directions.r_S is not None:
        vecs["-r_S"] = -est.directions.r_S[layer]
    if est.directions.v_P is not None:
        vecs["v_P"] = est.directions.v_P[layer]
    g = seeding.rng(subject.seed, "readout random direction")
    r = torch.from_numpy(g.standard_normal(vecs["v_rev"].numel())).to(vecs["v_rev"].dtype)
    vecs["random"] = r / r.norm()
    out = {}
    ref = vocab.refusal_first
    for label, vec in vecs.items():
        logits = logit_lens(model, vec).numpy()
        order = np.argsort(logits, kind="stable")
        out[label] = {
            "top": [(vocab.name(i), float(logits[i])) for i in order[::-1][:top_k]],
            "bottom": [(vocab.name(i), float(logits[i])) for i in order[:top_k]],
            "compliance_minus_refusal": (float(logits[vocab.openers].mean() - logits[ref])
                                         if vocab.openers else None),
            "harmful_minus_refusal": (float(logits[vocab.harmful].mean() - logits[ref])
                                      if vocab.harmful else None),
            **(vocab.described or {}),
        }
    dropped = weakref.ref(model)
    del model
    free_memory(dropped)
    return out

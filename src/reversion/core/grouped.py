"""K independent GPT-2 models trained as one batched computation.

A width-64 GPT-2 step is overhead-bound on a CPU: most of its time is operator
dispatch, not arithmetic. :class:`GroupedGPT2` holds the weights of K models with the
same configuration stacked along a leading run axis and runs all K forwards (and
backwards) in the same operators (``bmm`` over runs), so K runs cost about what one
does until the arithmetic dominates.

The runs stay independent: run k's loss depends only on run k's weights and batch,
the group's loss is the *sum* of the runs' losses (so run k's gradient is its own
loss's gradient), and AdamW is elementwise (so one optimizer over the stacked weights
is K optimizers). A run's numbers therefore equal those of the run trained alone up to
floating-point reduction order (tested: ``tests/test_grouped.py``). Weights go in and
out as plain ``transformers.GPT2LMHeadModel`` state dicts (the constructor,
:meth:`export`), so every checkpoint stays a Hugging Face folder.

Supported: ``GPT2LMHeadModel`` with tied embeddings, ``gelu`` (exact), ``gelu_new`` (tanh) or
``relu``, dropout off and right-padded batches (pads after every real token; a causal model
never lets them influence a real token, so no attention mask is needed). :func:`supports`
says whether a model qualifies; everything else trains one run at a time.

Causal attention over the organism's short sequences (at most ``n_positions``, 17 tokens in
the default world) is written out: one ``baddbmm`` that scales and masks the scores, a softmax
and a ``bmm``. Measured against ``scaled_dot_product_attention`` (its CPU flash kernel), it cut
a 10-run grouped step by 9% (``benchmarks/step_variants.txt``: 145 ms against 159 ms).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reversion.core.batches import IGNORE, collate
from reversion.core.generation import EvalWork

__all__ = ["GroupedGPT2", "NonFiniteLoss", "supports", "stack_batches", "stack_prompts"]

ACTIVATIONS = {"gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}
"""Hugging Face ``activation_function`` names a group computes, and how."""

EVAL_CHUNK = 64
"""Prompts per run evaluated at a time (a group's evaluation memory grows with runs x this)."""


class NonFiniteLoss(FloatingPointError):
    """A run's loss is NaN or infinite; ``runs`` are their indices in the group."""

    def __init__(self, runs: list[int]):
        super().__init__(f"non-finite loss in run(s) {runs}")
        self.runs = runs


def supports(model: nn.Module) -> bool:
    """Whether ``model`` can join a group (a dropout-free, tied GPT-2 with an activation of
    :data:`ACTIVATIONS`)."""
    cfg = getattr(model, "config", None)
    return (type(model).__name__ == "GPT2LMHeadModel" and cfg is not None
            and cfg.activation_function in ACTIVATIONS and cfg.tie_word_embeddings
            and cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.0
            and not getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
            and not getattr(cfg, "reorder_and_upcast_attn", False)
            and cfg.scale_attn_weights and getattr(cfg, "add_cross_attention", False) is False)


def _config_sig(model: nn.Module) -> tuple:
    c = model.config
    shapes = tuple((n, tuple(t.shape)) for n, t in model.state_dict().items())
    return (c.n_head, c.layer_norm_epsilon, c.activation_function, shapes)


# A block's parameters under their Hugging Face names (HF's Conv1D already stores [in, out]).
_LAYER_PARAMS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                 "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                 "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")


def _pname(name: str) -> str:
    return name.replace(".", "_")


class GroupedGPT2(nn.Module):
    """K GPT-2 models of one configuration, stacked: every parameter is ``[K, *shape]``."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("a group needs at least one model")
        for i, m in enumerate(models):
            if not supports(m):
                raise ValueError(f"model {i} cannot join a group: a dropout-free GPT2LMHeadModel with tied "
                                 f"embeddings and one of the activations {sorted(ACTIVATIONS)} is "
                                 "required (train it alone instead)")
        sigs = {_config_sig(m) for m in models}
        if len(sigs) != 1:
            raise ValueError("a group's models must share one configuration (shapes, heads, norm epsilon, "
                             "activation)")
        self.config = models[0].config
        self.K = len(models)
        self.L = self.config.n_layer
        self.n_head = self.config.n_head
        self.eps = self.config.layer_norm_epsilon
        self.act = ACTIVATIONS[self.config.activation_function]
        self._masks: dict[tuple, torch.Tensor] = {}
        states = [m.state_dict() for m in models]
        device = next(models[0].parameters()).device

        def stack(name: str) -> nn.Parameter:
            return nn.Parameter(torch.stack([s[name].detach().to(device, torch.float32) for s in states]).contiguous())

        self.wte = stack("transformer.wte.weight")
        self.wpe = stack("transformer.wpe.weight")
        self.blocks = nn.ModuleList()
        for l in range(self.L):
            block = nn.ParameterDict({_pname(n): stack(f"transformer.h.{l}.{n}") for n in _LAYER_PARAMS})
            self.blocks.append(block)
        self.ln_f_weight = stack("transformer.ln_f.weight")
        self.ln_f_bias = stack("transformer.ln_f.bias")

    # ------------------------------------------------------------------ weights out
    def state_dict_of(self, k: int) -> dict[str, torch.Tensor]:
        """Run ``k``'s weights under Hugging Face GPT-2 names (``lm_head`` tied to ``wte``)."""
        out = {"transformer.wte.weight": self.wte[k], "transformer.wpe.weight": self.wpe[k],
               "transformer.ln_f.weight": self.ln_f_weight[k], "transformer.ln_f.bias": self.ln_f_bias[k]}
        for l, block in enumerate(self.blocks):
            for n in _LAYER_PARAMS:
                out[f"transformer.h.{l}.{n}"] = block[_pname(n)][k]
        return {n: t.detach().clone() for n, t in out.items()}

    def flat(self) -> torch.Tensor:
        """``[K, P]``: every run's weights as one vector (a detached copy), for weight-space readouts."""
        return torch.cat([p.detach().reshape(self.K, -1) for p in self.parameters()], 1).clone()

    def export(self, k: int, into: nn.Module) -> nn.Module:
        """Copy run ``k``'s weights into ``into`` (a GPT2LMHeadModel of this configuration)."""
        missing, unexpected = into.load_state_dict(self.state_dict_of(k), strict=False)
        bad = [m for m in missing if m != "lm_head.weight"]
        if bad or unexpected:
            raise ValueError(f"export into a model of another shape: missing {bad}, unexpected {unexpected}")
        return into

    # ------------------------------------------------------------------ forward
    def _ln(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # x [K, N, d]; w, b [K, d]
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * w[:, None] + b[:, None]

    def _block(self, h: torch.Tensor, p: nn.ParameterDict, B: int, T: int,
               kv: list | None = None) -> torch.Tensor:
        """One block over ``[K, B*T, d]``; ``kv`` collects this block's keys and values."""
        K, d = self.K, h.shape[-1]
        H = self.n_head
        a = self._ln(h, p["ln_1_weight"], p["ln_1_bias"])
        qkv = torch.baddbmm(p["attn_c_attn_bias"][:, None], a, p["attn_c_attn_weight"])  # [K, B*T, 3d]
        # one copy into [3, K*B, H, T, hd]; q, k and v are then contiguous views
        qkv = qkv.view(K * B, T, 3, H, d // H).permute(2, 0, 3, 1, 4).contiguous()
        if kv is not None:
            kv.append((qkv[1], qkv[2]))
        q, k, v = (t.view(K * B * H, T, d // H) for t in qkv)
        # GPT-2's scale 1/sqrt(head_dim), the causal mask as -inf above the diagonal
        scores = torch.baddbmm(self._causal(T, q), q, k.transpose(1, 2), alpha=1 / math.sqrt(d // H))
        att = torch.bmm(torch.softmax(scores, -1), v).view(K * B, H, T, d // H)
        att = att.transpose(1, 2).reshape(K, B * T, d)
        return self._mlp(h + torch.baddbmm(p["attn_c_proj_bias"][:, None], att, p["attn_c_proj_weight"]), p)

    def _causal(self, T: int, like: torch.Tensor) -> torch.Tensor:
        """``[n, T, T]`` (an expanded view): 0 on and below the diagonal, -inf above."""
        key = (T, like.device)
        if key not in self._masks:
            self._masks[key] = torch.full((T, T), float("-inf"), device=like.device).triu(1)
        return self._masks[key].expand(like.shape[0], T, T)

    def _mlp(self, h: torch.Tensor, p: nn.ParameterDict) -> torch.Tensor:
        m = self._ln(h, p["ln_2_weight"], p["ln_2_bias"])
        m = self.act(torch.baddbmm(p["mlp_c_fc_bias"][:, None], m, p["mlp_c_fc_weight"]))
        return h + torch.baddbmm(p["mlp_c_proj_bias"][:, None], m, p["mlp_c_proj_weight"])

    def _block_step(self, h: torch.Tensor, p: nn.ParameterDict, keys: torch.Tensor, values: torch.Tensor,
                    pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """One new token per row (``h [K, N, d]`` at positions ``pos [K*N]``) against the KV cache
        ``keys, values [K*N, H, W, hd]``, which it extends in place; ``valid [K*N, 1, 1, W]``."""
        K, N, d = h.shape
        H = self.n_head
        a = self._ln(h, p["ln_1_weight"], p["ln_1_bias"])
        qkv = torch.baddbmm(p["attn_c_attn_bias"][:, None], a, p["attn_c_attn_weight"])
        q, k, v = qkv.view(K * N, 3, H, 1, d // H).unbind(1)  # [K*N, H, 1, hd]
        at = pos[:, None, None, None].expand(K * N, H, 1, d // H)
        keys.scatter_(2, at, k)
        values.scatter_(2, at, v)
        att = F.scaled_dot_product_attention(q, keys, values, attn_mask=valid)
        att = att.reshape(K, N, d)
        return self._mlp(h + torch.baddbmm(p["attn_c_proj_bias"][:, None], att, p["attn_c_proj_weight"]), p)

    def _tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ``ids [K, ...]``, run k from run k's table: ``[K, ..., d]``."""
        V, d = self.wte.shape[1], self.wte.shape[2]
        offset = (torch.arange(self.K, device=ids.device) * V).view(-1, *[1] * (ids.dim() - 1))
        return F.embedding(ids + offset, self.wte.reshape(self.K * V, d))

    @staticmethod
    def _at_last(h: torch.Tensor, lengths: torch.Tensor, T: int) -> torch.Tensor:
        """``h [K, N*T, d]`` at each sequence's last real token (``lengths [K, N]``): ``[K, N, d]``."""
        K, N = lengths.shape
        rows = (torch.arange(N, device=h.device) * T)[None, :] + (lengths - 1)
        return torch.gather(h, 1, rows[:, :, None].expand(K, N, h.shape[-1]))

    def hidden(self, input_ids: torch.Tensor, layers: Sequence[int] | None = None,
               upto: int | None = None, kv: list | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``input_ids [K, B, T]`` -> (final hidden ``[K, B*T, d]`` after ``ln_f``, the hidden
        states at ``layers`` in the Hugging Face convention: 0 = embeddings, l = block l's output,
        L = after ``ln_f``). ``upto`` stops after that block (the final state is then not computed);
        ``kv`` collects every block's keys and values."""
        K, B, T = input_ids.shape
        if K != self.K:
            raise ValueError(f"input_ids has {K} runs; the group has {self.K}")
        if T > self.config.n_positions:
            raise ValueError(f"sequences of length {T} exceed n_positions={self.config.n_positions}")
        d = self.wte.shape[2]
        h = self._tokens(input_ids)  # [K, B, T, d]
        h = (h + self.wpe[:, None, :T]).reshape(K, B * T, d)
        want = set(layers or ())
        got: list[torch.Tensor] = []
        if 0 in want:
            got.append(h)
        last = self.L if upto is None else upto
        for l in range(last):
            h = self._block(h, self.blocks[l], B, T, kv)
            if l + 1 in want and l + 1 < self.L:
                got.append(h)
        if upto is not None and upto < self.L:
            return h, got
        h = self._ln(h, self.ln_f_weight, self.ln_f_bias)
        if self.L in want:
            got.append(h)
        return h, got

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """``[K, N, d]`` -> ``[K, N, V]`` (the tied unembedding)."""
        return torch.bmm(h, self.wte.transpose(1, 2))

    def _token_ce(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token cross-entropy of every position, ``[K, B*(T-1)]`` (0 where the label is
        ``-100``; labels shifted by one, as HF's loss), and the labelled count per run ``[K]``."""
        K, B, T = input_ids.shape
        h, _ = self.hidden(input_ids)
        logits = self.logits(h).view(K, B, T, -1)[:, :, :-1]
        tgt = labels[:, :, 1:]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1),
                             ignore_index=IGNORE, reduction="none").view(K, -1)
        return ce, (tgt != IGNORE).reshape(K, -1).sum(1)

    def losses(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-run mean next-token cross-entropy over labelled tokens, ``[K]``."""
        ce, n = self._token_ce(input_ids, labels)
        if bool((n == 0).any()):
            raise ValueError("a run's batch has no labelled token")
        return ce.sum(1) / n

    def train_step(self, opt: torch.optim.Optimizer, input_ids: torch.Tensor, labels: torch.Tensor) -> list[float]:
        """One optimizer step of every run on its own batch; returns the runs' losses. The step
        minimises the *sum* of the runs' losses, so run k's gradient is its own loss's (the runs
        share no weight). Raises :class:`NonFiniteLoss` naming the runs, before any weight moves."""
        loss = self.losses(input_ids, labels)
        bad = [k for k in range(self.K) if not torch.isfinite(loss[k])]
        if bad:
            raise NonFiniteLoss(bad)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        return loss.tolist()

    @torch.no_grad()
    def last_token_means(self, ids: torch.Tensor, lengths: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        """Mean hidden state at each prompt's last token: ``ids [K, N, T]`` right-padded with
        ``lengths [K, N]`` -> ``[K, len(layers), d]`` float64 (summed in float64)."""
        K, N, T = ids.shape
        layers = sorted(layers)
        _, hs = self.hidden(ids, layers, upto=None if max(layers) >= self.L else max(layers))
        return torch.stack([self._at_last(h, lengths, T).double().sum(1) / N for h in hs], 1)

    @torch.no_grad()
    def greedy(self, ids: torch.Tensor, lengths: torch.Tensor, max_new_tokens: int,
               eos_id: int | None) -> torch.Tensor:
        """Greedy continuations of right-padded prompts ``ids [K, N, T]`` (true ``lengths [K, N]``):
        ``[K, N, max_new_tokens]``. One forward over the prompts fills a KV cache; each new token
        is written at its own row's next position, so prompts of every length share a batch
        (a key is visible to a row up to that row's position: the pads behind a short prompt are
        overwritten before they could be read)."""
        K, N, T = ids.shape
        width = T + max_new_tokens  # from the padded width: the same arithmetic in any group
        if width > self.config.n_positions:
            raise ValueError(f"prompt + continuation of length {width} exceeds n_positions")
        kv: list = []
        d = self.wte.shape[2]
        h, _ = self.hidden(ids, kv=kv)
        grow = (0, 0, 0, width - T)  # [K*N, H, T, hd] -> room for the continuation
        caches = [(F.pad(k, grow).contiguous(), F.pad(v, grow).contiguous()) for k, v in kv]
        last = self._at_last(h, lengths, T)
        pos = lengths.reshape(K * N).clone()
        out = []
        done = torch.zeros((K, N), dtype=torch.bool, device=ids.device)
        span = torch.arange(width, device=ids.device)
        for i in range(max_new_tokens):
            nxt = self.logits(last).argmax(-1)  # [K, N]
            out.append(nxt)
            if eos_id is not None:
                done |= nxt == eos_id
                if bool(done.all()):
                    break
            if i == max_new_tokens - 1:
                break
            h = self._tokens(nxt) + torch.gather(self.wpe, 1, pos.view(K, N, 1).expand(K, N, d))
            valid = (span[None, :] <= pos[:, None])[:, None, None, :]
            for l in range(self.L):
                h = self._block_step(h, self.blocks[l], *caches[l], pos, valid)
            last = self._ln(h, self.ln_f_weight, self.ln_f_bias)
            pos = pos + 1
        gen = torch.stack(out, 2)
        if gen.shape[2] < max_new_tokens:  # every row ended: pad with EOS (judges cut at the first)
            gen = torch.cat([gen, torch.full((K, N, max_new_tokens - gen.shape[2]), eos_id,
                                             dtype=gen.dtype, device=gen.device)], 2)
        return gen

    @torch.no_grad()
    def answer_loss_sums(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-run summed cross-entropy over labelled tokens and their count, ``([K], [K])``."""
        ce, n = self._token_ce(input_ids, labels)
        return ce.double().sum(1), n

    def run_work(self, works: Sequence[EvalWork], widths: tuple[int, int] | None = None,
                 ) -> list[tuple[dict[str, list[list[int]]], dict[str, float]]]:
        """:func:`reversion.core.generation.run_work` for every run at once: run k does ``works[k]``
        (the same names and sizes in every run; the prompts may differ). ``widths``: fixed
        (prompt, sequence) pad widths (see :func:`stack_prompts`)."""
        pw, sw = widths or (None, None)
        if len(works) != self.K:
            raise ValueError(f"{len(works)} evaluations for a group of {self.K}")
        w0 = works[0]
        for w in works[1:]:
            if (set(w.gens), set(w.pairs), w.max_new_tokens, w.eos_id, w.pad_id) != \
                    (set(w0.gens), set(w0.pairs), w0.max_new_tokens, w0.eos_id, w0.pad_id):
                raise ValueError("a group's evaluations must have the same shape")
        device = self.wte.device
        out = [({}, {}) for _ in works]
        n_chunk = EVAL_CHUNK  # prompts per run at a time: bounded memory, the same arithmetic in any group
        for name in w0.gens:
            gen: list[list[list[int]]] = [[] for _ in works]
            n = len(w0.gens[name])
            for i in range(0, n, n_chunk):
                ids, lengths = stack_prompts([w.gens[name][i:i + n_chunk] for w in works], w0.pad_id, device, pw)
                part = self.greedy(ids, lengths, w0.max_new_tokens, w0.eos_id).tolist()
                for k in range(self.K):
                    gen[k].extend(part[k])
            for k in range(self.K):
                out[k][0][name] = gen[k]
        for name in w0.pairs:
            total = torch.zeros(self.K, dtype=torch.float64, device=device)
            count = torch.zeros(self.K, dtype=torch.long, device=device)
            n = len(w0.pairs[name])
            for i in range(0, n, n_chunk):
                batches = [collate([p for p, _ in w.pairs[name][i:i + n_chunk]], [a for _, a in w.pairs[name][i:i + n_chunk]],
                                   pad_id=w0.pad_id, device=device) for w in works]
                ids, labels = stack_batches(batches, w0.pad_id, sw)
                t, c = self.answer_loss_sums(ids, labels)
                total += t
                count += c
            for k in range(self.K):
                out[k][1][name] = float(total[k] / count[k])
        return out

def _pad(seqs: Sequence[Sequence[int]], width: int, pad_id: int) -> list[list[int]]:
    return [list(s) + [pad_id] * (width - len(s)) for s in seqs]


def _width(longest: int, width: int | None) -> int:
    if width is None:
        return longest
    if longest > width:
        raise ValueError(f"a sequence of length {longest} does not fit the group's width {width}")
    return width


def stack_prompts(per_run: Sequence[Sequence[Sequence[int]]], pad_id: int,
                  device=None, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """K prompt lists of one length N -> right-padded ``ids [K, N, width]`` and ``lengths [K, N]``
    (``width``: a fixed width, so the arithmetic does not depend on the other runs; default the
    longest prompt)."""
    n = {len(p) for p in per_run}
    if len(n) != 1:
        raise ValueError(f"every run needs the same number of prompts, got {sorted(n)}")
    width = _width(max(len(s) for p in per_run for s in p), width)
    ids = torch.tensor([_pad(p, width, pad_id) for p in per_run], dtype=torch.long, device=device)
    lengths = torch.tensor([[len(s) for s in p] for p in per_run], dtype=torch.long, device=device)
    return ids, lengths


def stack_batches(batches: Sequence[dict], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """K collated batches (:func:`reversion.core.batches.collate`, same batch size) ->
    ``input_ids, labels [K, B, width]``, right-padded (default: to the widest)."""
    sizes = {b["input_ids"].shape[0] for b in batches}
    if len(sizes) != 1:
        raise ValueError(f"every run's batch must have the same size, got {sorted(sizes)}")
    width = _width(max(b["input_ids"].shape[1] for b in batches), width)

    def widen(t: torch.Tensor, fill: int) -> torch.Tensor:
        return F.pad(t, (0, width - t.shape[1]), value=fill)

    return (torch.stack([widen(b["input_ids"], pad_id) for b in batches]),
            torch.stack([widen(b["labels"], IGNORE) for b in batches]))


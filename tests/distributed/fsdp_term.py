"""The block term under FSDP2 (``fully_shard``, CPU, gloo) against one process.

Run by ``tests/test_distributed.py``::

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/fsdp_term.py --out OUT

A tiny random GPT-2 (from its config: nothing is read) and an Oppose term (tanh: a gradient at theta_S) on 9 random probes in
batches of 4, 4 and 1 (the last leaves rank 1 without a row). At 3 steps, every rank computes
the term and its gradient twice: on an unsharded copy with the term itself (the one-process
answer) and on the sharded model through :class:`ShardedTerm`; the sharded gradients are
gathered (``full_tensor``). Then once more with the all-reduce's backward cut to the local
part (a planted error: the gradient must come out 1/W of the answer). Rank 0 writes
``OUT/fsdp.json``. (The monitor under FSDP2: ``fsdp_monitor.py``.)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import GPT2Config, GPT2LMHeadModel

from reversion.core.interventions import Oppose
from reversion.subjects.base import Prompts
from reversion.subjects.checkpoints import trainer_hooks as monitor
from reversion.subjects.checkpoints.trainer_hooks import ShardedTerm

STEPS = (1, 2, 3)


def tiny() -> tuple[GPT2LMHeadModel, Oppose]:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=1,
                     eos_token_id=1, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(1)
    ids = [tuple(torch.randint(2, 64, (int(n),), generator=g).tolist())
           for n in torch.randint(3, 9, (9,), generator=g)]
    v = torch.randn(3, 32, generator=g, dtype=torch.float64)
    block = Oppose(v / v.norm(dim=1, keepdim=True), torch.full((3,), 0.5, dtype=torch.float64), 3.0, [1, 2], 4)
    block.setup(model, None, Prompts(ids, None, ids, ids, 0))
    with torch.no_grad():  # move away from theta_S, so the projection is not 0
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.train(), block


def grads(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():  # same order on every rank: full_tensor is a collective
        out[name] = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad.clone()
    return out


def compare(model, ref, block, term) -> list[dict]:
    rows = []
    for step in STEPS:
        ref.zero_grad()
        model.zero_grad()
        t_ref = block.aux_loss(ref, None, step)
        t_ref.backward()
        t = term.aux_loss(model, None, step)
        t.backward()
        g, g_ref = grads(model), grads(ref)
        rows.append({"step": step, "term": float(t.detach()), "term_ref": float(t_ref.detach()),
                     "grad_err": max(float((g[k] - g_ref[k]).abs().max()) for k in g_ref),
                     "grad_scale": max(float(x.abs().max()) for x in g_ref.values())})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    model, block = tiny()
    ref = copy.deepcopy(model)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for b in model.transformer.h:
        fully_shard(b, mesh=mesh)
    fully_shard(model, mesh=mesh)
    seen: list[int] = []
    model.register_forward_pre_hook(lambda m, args, kw: seen.append(int(kw["input_ids"].shape[0])),
                                    with_kwargs=True)
    term = ShardedTerm(block)
    exact = compare(model, ref, block, term)
    rows_per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(rows_per_rank, seen)
    # Planted: the same forward value, but a backward that keeps only this rank's share.
    real = funcol.all_reduce
    monitor.funcol = type("Cut", (), {"all_reduce": staticmethod(
        lambda x, op, group: x + (real(x.detach(), op, group) - x.detach()))})
    cut = compare(model, ref, block, term)
    monitor.funcol = funcol
    if dist.get_rank() == 0:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "fsdp.json").write_text(json.dumps({"world": dist.get_world_size(), "exact": exact, "cut": cut,
                                                     "probe_rows": rows_per_rank}))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

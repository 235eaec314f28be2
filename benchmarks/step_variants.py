"""One grouped training step of the organism, in the variants the speed issue weighed.

    python benchmarks/step_variants.py [K] [threads]

K fresh default-world models (default 10) train as one group on their helpful-phase batches;
each variant is timed in its own process (a variant patches the grouped model), the median of
40 steps after 5, beside its matrix floor (counted FLOPs at this machine's 512 x 512 rate,
measured in the same process). Run it alone on an idle machine; compare variants within one
run. The variants: the step as shipped (written-out attention, the world's activation, fused
AdamW), and one change at a time -- SDPA's attention, tanh-GELU, ReLU, a per-parameter AdamW;
and the shipped step under each MKL mode (``MKL_CBWR``) and ATen capability.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

VARIANTS = {
    "shipped": {},
    "sdpa attention": {"attention": "sdpa"},
    "tanh-GELU": {"activation": "gelu_new"},
    "ReLU": {"activation": "relu"},
    "AdamW per parameter": {"optimizer": "for-loop"},
    "MKL COMPATIBLE": {"env": {"REVERSION_MKL_CBWR": "COMPATIBLE"}},
    "ATen AVX-512 (unpinned)": {"env": {"REVERSION_UNPINNED": "1", "ATEN_CPU_CAPABILITY": "avx512"}},
}

CHILD = r'''
import json, sys, time, numpy as np, torch, torch.nn.functional as F
from reversion.benchmark import count_flops, matmul_gflops
from reversion.core import grouped as G
from reversion.core.grouped import GroupedGPT2, stack_batches
from reversion.core.training import adamw
from reversion.infra import seeding
from reversion.subjects.organism.history import _batches
from reversion.subjects.organism.language import PAD, Language
from reversion.subjects.organism.model import build_model
from reversion.subjects.organism.worlds import make_world
v, K, threads = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
w = make_world("default", {"history": {"model": {"activation": v.get("activation", "gelu")}}})
h, lang = w.history, Language(w.history.language)
models = []
for i in range(K):
    seeding.seed_everything(i)
    models.append(build_model(h.model, lang.vocab_size))
if v.get("attention") == "sdpa":
    def block(self, h_, p, B, T, kv=None):
        K_, d = self.K, h_.shape[-1]
        H = self.n_head
        a = self._ln(h_, p["ln_1_weight"], p["ln_1_bias"])
        qkv = torch.baddbmm(p["attn_c_attn_bias"][:, None], a, p["attn_c_attn_weight"])
        qkv = qkv.view(K_ * B, T, 3, H, d // H).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        att = att.transpose(1, 2).reshape(K_, B * T, d)
        return self._mlp(h_ + torch.baddbmm(p["attn_c_proj_bias"][:, None], att, p["attn_c_proj_weight"]), p)
    G.GroupedGPT2._block = block  # SDPA's CPU flash kernel in place of the written-out attention
g = GroupedGPT2(models)
streams = [_batches("helpful", lang, h.helpful, seeding.rng(i, "helpful"), "cpu") for i in range(K)]
data = [stack_batches([next(s) for s in streams], PAD, lang.max_sequence_len) for _ in range(8)]
opt = (torch.optim.AdamW(g.parameters(), lr=1e-3, weight_decay=0.0) if v.get("optimizer") == "for-loop"
       else adamw(g.parameters(), 1e-3))
flops = count_flops(lambda: g.losses(*data[0]).sum().backward())
rate = matmul_gflops(threads, repeats=50) * 1e9
torch.set_num_threads(threads)
for i in range(5):
    g.train_step(opt, *data[i % 8])
ts = []
for i in range(40):
    t = time.perf_counter(); g.train_step(opt, *data[i % 8]); ts.append(time.perf_counter() - t)
ms, floor = float(np.median(ts) * 1000), flops / rate * 1000
print("RESULT" + json.dumps({"ms": ms, "floor_ms": floor, "to_floor": ms / floor,
                             "capability": torch.backends.cpu.get_cpu_capability()}))
'''


def main() -> None:
    K = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rows = {}
    for name, v in VARIANTS.items():
        env = {**os.environ, **v.get("env", {})}
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(v), str(K), str(threads)], env=env,
                             capture_output=True, text=True, check=True).stdout
        rows[name] = json.loads([x for x in out.splitlines() if x.startswith("RESULT")][-1][6:])
        r = rows[name]
        print(f"{name:26s} {r['ms']:7.1f} ms  floor {r['floor_ms']:6.1f} ms  x{r['to_floor']:.2f}  "
              f"({r['capability']})", flush=True)


if __name__ == "__main__":
    main()

"""Write ``organism_spread.json`` from the default book's claims page (``results/07_claims/metrics.json``):
each row's spread over histories, margin and the paper's effect on that scale, for the power test.

Rows judged against a null's p99 (V1-a, V1-b) are left out: the paper's alignment is measured at a
width whose null is about 0.04, so its value is not an effect size at the organism's width. Run
from the repository root after ``make book``: ``.venv/bin/python tests/data/organism_spread.py``.
"""

import json
import subprocess
from pathlib import Path

BOUNDS = {"V1-d": [-2.0, 2.0], "V1-e": [-1.0, 1.0], "V2-d": [-1.0, 1.0], "V2-g": [-1.0, 1.0]}
THRESHOLD_ROWS = {"V1-a", "V1-b"}

doc = json.loads(Path("results/07_claims/metrics.json").read_text())
rows = [{"row": k, "sd": v["sd"], "margin": v["margin"], "paper_effect": v["paper_effect"], "bounds": BOUNDS.get(k)}
        for k, v in doc["metrics"]["power"].items() if k not in THRESHOLD_ROWS and v["sd"] is not None]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
out = {"source": "results/07_claims/metrics.json of the default book", "commit": commit,
       "n_histories": doc["metrics"]["robustness"]["n_histories"], "rows": rows}
Path(__file__).with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")

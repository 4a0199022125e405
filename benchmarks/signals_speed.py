"""Speed of the `embed` and `score` stages on the CPU, and why BERTScore is a poor P(.) for yes/no tasks.

    python benchmarks/signals_speed.py [--params params.yaml] [--dataset boolq]

Prints nodes per second for embed and score on the dataset's tree (run `generate` first), then the
BERTScore F1 (packaged MiniLM, 6 layers) of yes/no answers against yes/no references.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from der_pipeline.config import load_params
from der_pipeline.signals.embed import embed
from der_pipeline.signals.score import bertscore_f1, score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dataset", default="boolq")
    args = ap.parse_args()
    p = load_params(args.params)
    with tempfile.TemporaryDirectory() as tmp:  # write copies elsewhere: the real artifacts stay untouched
        src = p.path("data")
        for sub in ("prepared", "tree"):
            (Path(tmp) / sub).symlink_to((src / sub).resolve())
        q = p.override("paths", data=str(tmp))
        e = embed(q, args.dataset)
        s = score(q, args.dataset)
    print(f"embed: {e['rows']} texts in {e['seconds']} s = {e['rows_per_s']} per s")
    print(f"score: {s['rows']} nodes in {s['seconds']} s = {s['rows_per_s']} per s (task metric + BERTScore)")
    pairs = [("yes", "yes"), ("no", "no"), ("no", "yes"), ("yes", "no"),
             ("Yes, the passage says so.", "yes"), ("No, it does not.", "yes")]
    f1 = bertscore_f1([c for c, _ in pairs], [r for _, r in pairs], p)
    print("BERTScore F1 (all-MiniLM-L6-v2, 6 layers):")
    for (c, r), f in zip(pairs, f1):
        print(f"  candidate {c!r:32} reference {r!r:6} -> {f:.3f}")


if __name__ == "__main__":
    main()

"""Probe an answer type's `generation.max_tokens` before a long run: an expert's hop-1 answers to the first
N sampled queries of a dataset at several max_tokens, with how many were cut off, parsed and right.

Prepares the sample into a temp folder (the repository's data/ is untouched) and uses params.yaml's backend.

    python scripts/probe_max_tokens.py --dataset gsm8k --queries 8 --max-tokens 192,384 --expert qwen2.5-coder-0.5b

To try a tighter instruction before editing der_pipeline/experts/prompts.py (a shorter answer is a cheaper
tree: GSM8K's worked answers are most of its generation time):

    python scripts/probe_max_tokens.py --dataset gsm8k --expert qwen2.5-coder-0.5b --max-tokens 256 \
        --instruction "Solve the math problem in at most three short steps. End with a final line 'Answer: <number>'."

Note: a number parser falls back to the last number in the text, so "parsed" alone says little for GSM8K;
"cut off" (finish_reason 'length') is what shows a budget too small.
"""
from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import yaml

from der_pipeline.artifacts import load_prepared
from der_pipeline.config import load_params
from der_pipeline.data.prepare import prepare_dataset
from der_pipeline.experts.backends import make_backend
from der_pipeline.experts.keys import render_prompt
from der_pipeline.signals.metrics import score_answer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--max-tokens", default="192,384", help="comma-separated budgets to try")
    ap.add_argument("--expert", action="append", required=True, help="repeatable")
    ap.add_argument("--instruction", help="replace the answer type's instruction (chat and completion prompts) "
                                          "and its format reminder for this probe only")
    args = ap.parse_args()
    raw = yaml.safe_load(pathlib.Path(args.params).read_text())
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="probe-"))
    raw["paths"]["data"] = str(tmp / "data")
    raw["paths"]["source_data"] = str((pathlib.Path(args.params).parent / raw["paths"]["source_data"]).resolve())
    raw["data"]["datasets"].setdefault(args.dataset, {})["sample"] = args.queries
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    p = load_params(tmp / "params.yaml")
    prepare_dataset(args.dataset, p)
    queries = load_prepared(p, args.dataset).to_pylist()
    if args.instruction:
        from der_pipeline.experts import prompts

        kind = queries[0]["answer_type"]
        prompts.INSTRUCTIONS[kind] = prompts.FORMAT_REMINDERS[kind] = args.instruction
        print(f"instruction for {kind}: {args.instruction!r}")
    backend = make_backend(p.generation)
    for name in args.expert:
        expert = p.expert(name)
        for budget in (int(x) for x in args.max_tokens.split(",")):
            kind = queries[0]["answer_type"]
            pb = p.override("generation", max_tokens={**p.generation.max_tokens, kind: budget})
            t0 = time.perf_counter()
            outs = list(backend.generate(expert, [render_prompt(pb, expert, q) for q in queries]))
            scores = [score_answer(o.text, q["reference"], q["answer_type"], q["aliases"])
                      for o, q in zip(outs, queries)]
            print(f"{name} max_tokens {budget}: cut off {sum(o.finish_reason == 'length' for o in outs)}/{len(outs)}, "
                  f"parsed {sum(s.parsed != '' for s in scores)}/{len(outs)}, right {sum(s.score for s in scores):.0f}/"
                  f"{len(outs)}, mean output tokens {sum(o.completion_tokens for o in outs) / len(outs):.0f}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    backend.close()


if __name__ == "__main__":
    main()

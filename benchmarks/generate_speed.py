"""Generation speed on the same prompts: `generate`'s path against raw llama.cpp, and prefix-ordered against naive
order.

Prints tokens per second of (a) the backend as `generate` uses it (chat template, sampling, stop handling),
(b) raw llama.cpp evaluation of the same token sequences (tokenise + eval, no sampling), their ratio, and
(c) the speed-up of running one expert's refinements of a query back to back (shared prefix: KV-cache
reuse) over an order that alternates queries (no shared prefix between consecutive calls).

    python benchmarks/generate_speed.py [--expert qwen2.5-coder-0.5b] [--queries 4]
"""
from __future__ import annotations

import argparse
import time

from der_pipeline.artifacts import load_prepared
from der_pipeline.config import load_params
from der_pipeline.experts.backends import LlamaCppBackend
from der_pipeline.experts.prompts import build_prompt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--expert", default="qwen2.5-coder-0.5b")
    ap.add_argument("--queries", type=int, default=4)
    args = ap.parse_args()
    p = load_params(args.params)
    expert = p.expert(args.expert)
    qs = load_prepared(p, "boolq").to_pylist()[: args.queries]
    previous = ["Yes, the passage says so.", "No.", "I am not sure, maybe.", "Yes"]
    mt = p.generation.max_tokens["yes_no"]
    prefix_order = [(q, prev) for q in qs for prev in previous]  # one query's refinements back to back
    naive_order = [(q, prev) for prev in previous for q in qs]  # consecutive calls share no prefix

    backend = LlamaCppBackend(p.generation)
    llm = backend.model(expert)

    def run(order):
        prompts = [build_prompt(expert.chat, q["question"], q["context"], "yes_no", mt, prev) for q, prev in order]
        llm.reset()
        t0 = time.perf_counter()
        outs = list(backend.generate(expert, prompts))
        secs = time.perf_counter() - t0
        return outs, secs, sum(o.prompt_tokens + o.completion_tokens for o in outs)

    run(prefix_order[:1])  # warm-up
    outs, t_prefix, tokens = run(prefix_order)
    _, t_naive, tokens_naive = run(naive_order)

    # raw llama.cpp: evaluate the same number of tokens per call with no prefix reuse and no sampling
    prompts = [build_prompt(expert.chat, q["question"], q["context"], "yes_no", mt, prev) for q, prev in naive_order]
    raw_tokens = 0
    t0 = time.perf_counter()
    for pr, out in zip(prompts, outs):
        text = pr.text if pr.kind == "completion" else pr.messages[0]["content"]
        toks = llm.tokenize(text.encode(), add_bos=True)[: out.prompt_tokens + out.completion_tokens]
        llm.reset()
        llm.eval(toks)
        raw_tokens += len(toks)
    t_raw = time.perf_counter() - t0

    print(f"expert {expert.name}, {len(prefix_order)} calls ({args.queries} queries x {len(previous)} refinements)")
    print(f"generate, prefix-ordered : {tokens / t_prefix:8.1f} tok/s  ({t_prefix:.1f} s)")
    print(f"generate, naive order    : {tokens_naive / t_naive:8.1f} tok/s  ({t_naive:.1f} s)")
    print(f"raw llama.cpp eval       : {raw_tokens / t_raw:8.1f} tok/s  ({t_raw:.1f} s)")
    print(f"generate / raw (prefix-ordered): {tokens / t_prefix / (raw_tokens / t_raw):.2f}")
    print(f"prefix-ordered speed-up over naive order: {t_naive / t_prefix:.2f}x")
    backend.close()


if __name__ == "__main__":
    main()

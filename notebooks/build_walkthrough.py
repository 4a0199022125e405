"""Write notebooks/walkthrough.ipynb and execute it in place (outputs saved).

    python notebooks/build_walkthrough.py

The notebook walks through the pipeline on the committed artifacts only: no LLM is called.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent

CELLS = [
    ("md", "# der-pipeline walkthrough\n\nEverything below reads the artifacts committed in the repository "
           "(prepared queries, the trajectory tree, scores, embeddings, trained policies, results). "
           "No LLM is called; the PPO run at the end takes seconds."),
    ("code", "import os, json\nos.chdir('..')  # the repository root\nos.environ['HF_HUB_OFFLINE'] = '1'\n"
             "from der_pipeline.config import load_params\np = load_params('params.yaml')\n"
             "[e.name for e in p.experts], p.data.active()"),
    ("md", "## 1. Prepared queries\nOne canonical schema for every dataset; the split depends only on the query id "
           "and the seed."),
    ("code", "import polars as pl\nfrom der_pipeline.artifacts import load_prepared\n"
             "q = pl.from_arrow(load_prepared(p, 'boolq'))\nprint(q.group_by('split').len())\n"
             "q.select('qid', 'split', 'question', 'reference').head(5)"),
    ("md", "## 2. The trajectory tree\nFor every query: 4 first answers and 16 refinements through the Knowledge "
           "Transfer Prompt."),
    ("code", "from der_pipeline.generate.tree import load_tree\nprepared, tree = load_tree(p, 'boolq')\n"
             "t = pl.from_arrow(tree)\nprint(prepared.num_rows, 'queries with a complete tree,', t.height, 'nodes')\n"
             "t.filter(pl.col('qid') == t['qid'][0]).select('path', 'prompt_tokens', 'completion_tokens', "
             "'node_key', 'answer')"),
    ("md", "## 3. Is the tree trustworthy?\nStale nodes (made under other settings, so not read), task score and parse "
           "rate of every path (rows: first expert; columns: the refining expert)."),
    ("code", "from der_pipeline.evaluate.inspect_tree import inspect\nfrom IPython.display import Markdown\n"
             "Markdown(inspect(p, 'boolq'))"),
    ("md", "## 3b. The experts' own confidence\nFrom their token probabilities (the `confidence` stage): for each "
           "expert's first answer, P(yes) against whether it was right."),
    ("code", "from der_pipeline.artifacts import load_confidence, load_scores\n"
             "conf = load_confidence(p, 'boolq', tree)\nsc = pl.from_arrow(load_scores(p, 'boolq'))\n"
             "c = pl.DataFrame([{'qid': q, 'path': path, **v} for (q, path), v in conf.items()])\n"
             "c.join(sc.select('qid', 'path', 'task_score'), on=['qid', 'path']).group_by('path', 'task_score')"
             ".agg(pl.len(), pl.col('yes_prob').mean().alias('mean P(yes)'), "
             "pl.col('mean_logprob').mean()).sort('path', 'task_score')"),
    ("md", "## 4. BERTScore rewards wrong yes/no answers\nThe task metric and BERTScore of the same nodes, split by "
           "whether the answer was right."),
    ("code", "from der_pipeline.artifacts import load_scores\ns = pl.from_arrow(load_scores(p, 'boolq'))\n"
             "s.group_by('task_score').agg(pl.len(), pl.col('bertscore_f1').mean().alias('mean BERTScore F1'))"
             ".sort('task_score')"),
    ("md", "## 5. Train a router on the cached tree\nHand-written PPO (cleanrl style) on the train split, keeping the "
           "iteration chosen by 3-fold cross-validation on the train split; the policy kept is the three folds' "
           "policies at it, averaged, or the best fixed path where that policy does not beat it out of fold by "
           "more than one standard error (`ppo.fallback`); seconds on a CPU."),
    ("code", "from der_pipeline.evaluate.common import load_split, summarize, public\n"
             "from der_pipeline.router.selection import train_ppo\n"
             "from der_pipeline.router.methods import PolicyRouter\n"
             "split = load_split(p, 'boolq')\n"
             "agent, hist = train_ppo(split.train, p.reward, p.override('ppo', total_timesteps=40960).ppo, seed=1, "
             "scale=split.scale)\n"
             "print('kept iteration', hist[-1].get('selected_iteration'), 'of', len(hist))\n"
             "print('DER uses', hist[-1].get('policy'), hist[-1].get('fixed_path_check'))\n"
             "public(summarize([PolicyRouter(agent, split.scale, p.reward, state=p.ppo.state).route(split.test)], "
             "split.test, split.scale, p))"),
    ("md", "## 6. The committed results\nProduced by `dvc repro` (the evaluate, curves, ablate and cross_task stages); "
           "the README's results section is written from the same files."),
    ("code", "print(open('results/evaluate/boolq/table.md').read())"),
    ("code", "from IPython.display import Image\nImage('results/curves/boolq/cost_accuracy.png')"),
    ("code", "Markdown(open('results/curves/boolq/frontier.md').read())"),
    ("code", "Markdown(open('results/ablate/boolq/ablations.md').read())"),
    ("code", "Markdown(open('results/cross_task/table.md').read())"),
]


def build(cells: list[tuple[str, str]] = CELLS) -> nbformat.NotebookNode:
    """A notebook of ``cells``, each ("md" or "code", its source); build_own_pool.py builds with it too."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 600) -> nbformat.NotebookNode:
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


if __name__ == "__main__":
    out = HERE / "walkthrough.ipynb"
    nb = execute(build(), HERE)
    nbformat.write(nb, out)
    print(f"wrote {out}")

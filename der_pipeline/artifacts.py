"""Where every artifact of the pipeline lives, and how each is read back.

One module owns the paths and the loaders, so a stage that reads another's output
imports this, never the module that wrote it:

    data/prepared/<ds>.parquet          prepare   -> load_prepared
    data/specialists/<ds>/<expert>.lora.gguf  finetune -> dataset_params (the pool a dataset's tree is made with)
    data/tree/<ds>/shard-*.parquet      generate  -> load_tree (current nodes of complete queries only)
    data/embeddings/<ds>/               embed     -> load_embeddings
    data/scores/<ds>/scores.parquet     score     -> load_scores
    data/confidence/<ds>/shard-*.parquet  confidence -> load_confidence (current nodes only)
    models/<ds>/seed-<s>/policy.pt      train     -> router/checkpoint.py (its format lives there)
    results/<stage>/<ds>/               evaluate, curves, ablate, cross_task
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from der_pipeline.config import Params
from der_pipeline.io import read_table
from der_pipeline.schemas import CONFIDENCE, EMBEDDINGS, PREPARED, SCORES, join_path
from der_pipeline.tree_store import TreeStore

log = logging.getLogger(__name__)


# paths --------------------------------------------------------------------
def prepared_path(p: Params, dataset: str) -> Path:
    return p.path("data") / "prepared" / f"{dataset}.parquet"


def specialist_dir(p: Params, dataset: str) -> Path:
    return p.path("data") / "specialists" / dataset


def adapter_path(p: Params, dataset: str) -> Path:
    """The LoRA adapter (GGUF) of a dataset's specialist (params.yaml ``specialists``)."""
    return specialist_dir(p, dataset) / f"{p.specialists[dataset].expert}.lora.gguf"


def specialist_name(expert: str, dataset: str) -> str:
    return f"{expert}-{dataset}-lora"


def dataset_params(p: Params, dataset: str) -> Params:
    """The params a dataset's tree is made and read with: the pool with the dataset's specialist (if any) in
    its base expert's slot, named ``<expert>-<dataset>-lora``, with its adapter and, for the cost, the
    adapter's parameters added (its f16 file holds two bytes per parameter). Every reader of a tree goes
    through this, so a specialist's nodes are never mistaken for its base model's."""
    spec = p.specialists.get(dataset)
    if spec is None:
        return p
    path = adapter_path(p, dataset)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {dataset}'s specialist adapter is missing; run `der-pipeline finetune "
                                f"-d {dataset}` (or `dvc repro finetune`)")
    experts = [dataclasses.replace(e, name=specialist_name(e.name, dataset), adapter=str(path),
                                   params_b=e.params_b + os.path.getsize(path) / 2 / 1e9)
               if e.name == spec.expert else e for e in p.experts]
    order = [specialist_name(n, dataset) if n == spec.expert else n for n in p.evaluate.round_robin_order]
    # the specialist is applied: its entry goes, so the result validates (and a second call changes nothing)
    rest = {d: s for d, s in p.specialists.items() if d != dataset}
    return dataclasses.replace(p, experts=experts, specialists=rest,
                               evaluate=dataclasses.replace(p.evaluate, round_robin_order=order))


def tree_dir(p: Params, dataset: str) -> Path:
    return p.path("data") / "tree" / dataset


def embeddings_path(p: Params, dataset: str) -> Path:
    return p.path("data") / "embeddings" / dataset / "embeddings.parquet"


def confidence_dir(p: Params, dataset: str) -> Path:
    return p.path("data") / "confidence" / dataset


def scores_path(p: Params, dataset: str) -> Path:
    return p.path("data") / "scores" / dataset / "scores.parquet"


def model_dir(p: Params, dataset: str) -> Path:
    return p.path("models") / dataset


def policy_path(p: Params, dataset: str, seed: int | None = None, root: Path | None = None) -> Path:
    """<models>/<dataset>/seed-<seed>/policy.pt; the first of ``seeds`` by default (the one `ask` loads)."""
    base = (root / dataset) if root is not None else model_dir(p, dataset)
    return base / f"seed-{p.seeds[0] if seed is None else seed}" / "policy.pt"


def budget_policy_path(p: Params, dataset: str, share: float) -> Path:
    """The budgets stage's policy for one share (its first seed's): what `serve` offers as der@<share>."""
    return results_dir(p, "budgets", dataset) / f"policy-{share:g}.pt"


def results_dir(p: Params, stage: str, dataset: str | None = None) -> Path:
    """results/<stage>/<dataset>/: each evaluation stage owns one folder (one DVC out)."""
    base = p.path("results") / stage
    return base / dataset if dataset else base


# loaders ------------------------------------------------------------------
def remake(stage: str, dataset: str) -> str:
    """The commands that make a dataset's artifact of ``stage`` again (named when it is missing or damaged)."""
    return f"`der-pipeline {stage} -d {dataset}` (or `dvc repro {stage}`)"


def load_prepared(p: Params, dataset: str) -> pa.Table:
    return read_table(prepared_path(p, dataset), PREPARED, remake("prepare", dataset))


def expected_paths(names: list[str]) -> list[str]:
    """Every node of a 2-hop tree: N first answers, then N x N refinements (first expert > refiner)."""
    return [join_path([a]) for a in names] + [join_path([a, b]) for a in names for b in names]


def load_embeddings(p: Params, dataset: str) -> dict[tuple[str, str], np.ndarray]:
    t = read_table(embeddings_path(p, dataset), EMBEDDINGS, remake("embed", dataset))
    mat = np.asarray(t["embedding"].combine_chunks().flatten().to_numpy(), dtype=np.float32)
    mat = mat.reshape(t.num_rows, -1)
    return {(q, pth): mat[i] for i, (q, pth) in enumerate(zip(t["qid"].to_pylist(), t["path"].to_pylist()))}


def load_scores(p: Params, dataset: str) -> pa.Table:
    return read_table(scores_path(p, dataset), SCORES, remake("score", dataset))


def load_confidence(p: Params, dataset: str, nodes: pa.Table) -> dict[tuple[str, str], dict]:
    """The confidence signals of ``nodes`` (current tree nodes), by (qid, path); a node not scored yet is absent."""
    folder = confidence_dir(p, dataset)
    if not folder.exists() or not list(folder.glob("shard-*.parquet")):
        raise FileNotFoundError(f"{folder}: no confidence table; run `der-pipeline confidence` (or `dvc repro`)")
    table = TreeStore(folder, CONFIDENCE).read()
    by_key = {k: i for i, k in enumerate(table["node_key"].to_pylist())}
    rows = table.to_pylist()
    out = {}
    for qid, path, key in zip(nodes["qid"].to_pylist(), nodes["path"].to_pylist(), nodes["node_key"].to_pylist()):
        i = by_key.get(key)
        if i is not None:
            out[(qid, path)] = rows[i]
    return out


def load_train_summary(p: Params, dataset: str) -> dict:
    path = model_dir(p, dataset) / "train_summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; run `der-pipeline train --to-models` (or `dvc repro`)")
    import json

    return json.loads(path.read_text())

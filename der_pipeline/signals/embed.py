"""The `embed` stage: sentence-transformers embeddings of every query and every node's answer.

The RL state is s_t = [emb(Q), emb(A_{t-1})]. Queries are embedded as the
question followed by its context (the model truncates at its own limit);
answers as their raw text. Rows with path "" hold the query embedding.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa

from der_pipeline.artifacts import dataset_params, embeddings_path
from der_pipeline.config import Params
from der_pipeline.experts.models import embedder_path
from der_pipeline.generate.tree import load_tree
from der_pipeline.io import write_json, write_table
from der_pipeline.schemas import EMBEDDINGS

_MODELS: dict[str, object] = {}


def load_embedder(source: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = str(embedder_path(source))  # SentenceTransformer wants a str, not a Path
    if path not in _MODELS:
        from sentence_transformers import SentenceTransformer

        _MODELS[path] = SentenceTransformer(path, device="cpu")
    return _MODELS[path]


def query_text(question: str, context: str) -> str:
    return f"{question}\n{context}" if context else question


def encode(texts: list[str], p: Params) -> np.ndarray:
    model = load_embedder(p.signals.embedder)
    return np.asarray(model.encode(texts, batch_size=p.signals.embed_batch_size, convert_to_numpy=True,
                                   normalize_embeddings=True, show_progress_bar=len(texts) > 256), dtype=np.float32)


def embed(p: Params, dataset: str) -> dict:
    p = dataset_params(p, dataset)
    t0 = time.perf_counter()
    prepared, tree = load_tree(p, dataset)
    q_texts = [query_text(q, c) for q, c in zip(prepared["question"].to_pylist(), prepared["context"].to_pylist())]
    answers = tree["answer"].to_pylist()
    vecs = encode(q_texts + answers, p)
    qids = prepared["qid"].to_pylist() + tree["qid"].to_pylist()
    paths = [""] * prepared.num_rows + tree["path"].to_pylist()
    dim = vecs.shape[1]
    flat = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim).cast(pa.list_(pa.float32()))
    table = pa.table({"qid": qids, "path": paths, "embedding": flat})
    out = embeddings_path(p, dataset)
    write_table(table, out, EMBEDDINGS)
    write_json({"embedder": p.signals.embedder, "model_path_name": embedder_path(p.signals.embedder).name,
                "dim": dim, "rows": table.num_rows}, out.with_name("embedder.json"))
    secs = time.perf_counter() - t0
    return {"dataset": dataset, "rows": table.num_rows, "dim": dim, "seconds": round(secs, 2),
            "rows_per_s": round(table.num_rows / max(secs, 1e-9), 1)}

"""Every Parquet table of the pipeline, written down once and checked on read."""
from __future__ import annotations

import pyarrow as pa

PREPARED = pa.schema([
    pa.field("qid", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),  # train | test
    pa.field("question", pa.string(), nullable=False),
    pa.field("context", pa.string(), nullable=False),  # task text the experts see ("" if none)
    pa.field("reference", pa.string(), nullable=False),  # gold answer as text
    pa.field("answer_type", pa.string(), nullable=False),  # yes_no | span | number | summary
    pa.field("aliases", pa.list_(pa.string()), nullable=False),
])

# The expert's own confidence in one answer, from its token probabilities (experts/confidence.py).
# Nullable: a node generated without them (an engine that gives no log-probabilities, or a tree made
# before they were recorded) gets them from the `confidence` stage's scoring pass instead.
CONFIDENCE_FIELDS = [
    pa.field("yes_prob", pa.float32(), nullable=True),  # yes / (yes + no) mass at the first answer token
    pa.field("first_prob", pa.float32(), nullable=True),  # probability of the answer's first token
    pa.field("mean_logprob", pa.float32(), nullable=True),  # mean token log-probability of the answer
    pa.field("min_logprob", pa.float32(), nullable=True),  # its least likely token
    pa.field("answer_tokens", pa.int32(), nullable=True),  # the answer's length in tokens
]

# One row per node of the trajectory tree. ``path`` joins expert names with '>'.
TREE = pa.schema([
    pa.field("qid", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("hop", pa.int8(), nullable=False),
    pa.field("expert", pa.string(), nullable=False),
    pa.field("parent_path", pa.string(), nullable=False),  # "" at hop 1
    pa.field("prompt_tokens", pa.int32(), nullable=False),
    pa.field("completion_tokens", pa.int32(), nullable=False),
    pa.field("latency_s", pa.float32(), nullable=False),  # cost is computed from the tokens when read
    pa.field("answer", pa.string(), nullable=False),
    pa.field("finish_reason", pa.string(), nullable=False),
    pa.field("backend", pa.string(), nullable=False),
    pa.field("model_fingerprint", pa.string(), nullable=False),
    pa.field("node_key", pa.string(), nullable=False),  # hash of what went into the call (experts/keys.py)
    *CONFIDENCE_FIELDS,
])

# The `confidence` stage: every current node's confidence, recorded at generation or scored afterwards.
CONFIDENCE = pa.schema([
    pa.field("qid", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("node_key", pa.string(), nullable=False),
    *CONFIDENCE_FIELDS,
])

EMBEDDINGS = pa.schema([
    pa.field("qid", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),  # "" = the query itself
    pa.field("embedding", pa.list_(pa.float32()), nullable=False),
])

SECONDARY_METRICS = ("exact_match", "rouge1", "rouge2")  # reported beside the task score, never rewarded

SCORES = pa.schema([
    pa.field("qid", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("parsed_answer", pa.string(), nullable=False),
    pa.field("task_metric", pa.string(), nullable=False),  # accuracy | f1 | numeric_match | rougeL
    pa.field("task_score", pa.float32(), nullable=False),
    pa.field("exact_match", pa.float32(), nullable=True),  # span tasks only (metrics.SECONDARY_OF)
    pa.field("rouge1", pa.float32(), nullable=True),  # summary tasks only
    pa.field("rouge2", pa.float32(), nullable=True),  # summary tasks only
    pa.field("bertscore_f1", pa.float32(), nullable=False),
])

PATH_SEP = ">"


def join_path(experts: list[str] | tuple[str, ...]) -> str:
    return PATH_SEP.join(experts)


def split_path(path: str) -> list[str]:
    return path.split(PATH_SEP) if path else []

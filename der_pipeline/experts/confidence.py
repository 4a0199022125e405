"""An expert's own confidence in an answer, from its token probabilities.

For an answer of tokens a_1..a_n given its prompt, with p_k the model's next-token
distribution before a_k (softmax of the raw logits, temperature 1):

    first_prob    = p_1(a_1)                        how sure the expert was of its first token
    mean_logprob  = (1/n) Σ_k log p_k(a_k)          length-normalised likelihood of the whole answer
    min_logprob   = min_k log p_k(a_k)              its least likely token (one shaky word)
    answer_tokens = n
    yes_prob      = Y / (Y + N)  at position 1      two-label answers only (LABEL_WORDS): Y and N the mass of
                                                   the tokens that spell the first / second label, any case,
                                                   with or without a space (yes / no; positive / negative)

These are the signals of FrugalGPT/AutoMix-style cascades and of the DER state's
conf(A). An empty answer has n = 0: its mean and min are undefined (None) and
first_prob / yes_prob are read at the position where the answer would start.

``answer_confidence`` scores a stored answer with llama.cpp by prompt evaluation
only: the prompt goes through the model exactly as generation sent it (so the chat
template renders it identically), then the answer's tokens are evaluated in one
batch with logits kept for each; nothing is generated and the text is unchanged.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from der_pipeline.experts.prompts import Prompt

# The two labels of an answer type with two answers: yes_prob is the first one's share of their mass.
LABEL_WORDS = {"yes_no": (("yes",), ("no",)), "sentiment": (("positive",), ("negative",))}


@dataclass(frozen=True)
class AnswerConfidence:
    yes_prob: float | None
    first_prob: float | None
    mean_logprob: float | None
    min_logprob: float | None
    answer_tokens: int | None

    def row(self) -> dict:
        return asdict(self)


EMPTY = AnswerConfidence(None, None, None, None, 0)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def features(logits: np.ndarray, answer_ids: list[int], yes_ids: set[int] | None = None,
             no_ids: set[int] | None = None) -> AnswerConfidence:
    """The confidence of an answer from the logits that predict each of its tokens.

    ``logits`` has one row more than ``answer_ids`` may have: row k predicts answer token k; an
    empty answer passes the one row where it would start. ``yes_ids`` / ``no_ids``: token ids that
    spell yes / no, for a yes/no answer (None otherwise).
    """
    lp = log_softmax(np.atleast_2d(logits))
    yes_prob = None
    if yes_ids and no_ids:
        probs = np.exp(lp[0])
        y, n = float(probs[list(yes_ids)].sum()), float(probs[list(no_ids)].sum())
        yes_prob = y / (y + n) if y + n > 0 else 0.5
    if not answer_ids:
        return AnswerConfidence(yes_prob, None, None, None, 0)
    tok = np.array([lp[k, t] for k, t in enumerate(answer_ids)])
    return AnswerConfidence(yes_prob=yes_prob, first_prob=float(math.exp(tok[0])), mean_logprob=float(tok.mean()),
                            min_logprob=float(tok.min()), answer_tokens=len(answer_ids))


def word_token_ids(llm, words: tuple[str, ...]) -> set[int]:
    """The first-token ids of ``words`` in any case, with and without a leading space, where that first token
    spells the whole word (so 'No' is counted, 'Nothing' is not)."""
    ids = set()
    for w in words:
        for form in {w, w.capitalize(), w.upper()}:
            for text in (form, " " + form):
                toks = llm.tokenize(text.encode(), add_bos=False, special=False)
                if toks and llm.detokenize(toks[:1]).decode(errors="ignore").strip().lower() == w:
                    ids.add(toks[0])
    return ids


def eval_with_logits(llm, tokens: list[int]) -> np.ndarray:
    """Decode ``tokens`` after the first ``llm.n_tokens`` cached ones and return the logits of every one of
    them, [len(tokens), vocab] (the model need not keep logits for its whole context)."""
    llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
    n_vocab = llm.n_vocab()
    rows = []
    for i in range(0, len(tokens), llm.n_batch):
        chunk = list(tokens[i:i + llm.n_batch])
        llm._batch.set_batch(batch=chunk, n_past=llm.n_tokens, logits_all=True)
        llm._ctx.decode(llm._batch)
        flat = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(chunk) * n_vocab,))
        rows.append(flat.reshape(len(chunk), n_vocab).copy())
        llm.input_ids[llm.n_tokens:llm.n_tokens + len(chunk)] = chunk
        llm.n_tokens += len(chunk)
    llm._requires_eval = True  # the cache now ends in the answer: the next generation must not reuse its logits
    return np.concatenate(rows)


def confidence_after(llm, n_prompt: int, answer: str, kind: str, answer_type: str) -> AnswerConfidence:
    """The confidence of ``answer`` given the prompt whose ``n_prompt`` tokens are the first in the model's
    cache (as right after a generation): the last prompt token and the answer are evaluated again."""
    if n_prompt < 1:
        return EMPTY
    prompt_last = int(llm.input_ids[n_prompt - 1])
    lead = " " if kind == "completion" and answer and not answer[0].isspace() else ""
    answer_ids = llm.tokenize((lead + answer).encode(), add_bos=False, special=False) if answer else []
    answer_ids = answer_ids[: max(0, llm.n_ctx() - n_prompt - 1)]
    llm.n_tokens = n_prompt - 1
    logits = eval_with_logits(llm, [prompt_last, *answer_ids])
    yes, no = _label_ids(llm, answer_type) if answer_type in LABEL_WORDS else (None, None)
    return features(logits[: max(1, len(answer_ids))], answer_ids, yes, no)


def answer_confidence(llm, prompt: Prompt, answer: str, seed: int) -> AnswerConfidence:
    """Score a stored answer: the prompt is evaluated as generation sent it (one token sampled at temperature
    0, which renders the chat template identically and caches the prompt), then the answer's tokens."""
    if prompt.kind == "chat":
        out = llm.create_chat_completion(messages=list(prompt.messages), max_tokens=1, temperature=0.0, seed=seed)
    else:
        out = llm.create_completion(prompt=prompt.text, max_tokens=1, temperature=0.0, seed=seed)
    return confidence_after(llm, int(out["usage"]["prompt_tokens"]), answer, prompt.kind, prompt.answer_type)


def _label_ids(llm, answer_type: str) -> tuple[set[int], set[int]]:
    """The model's token ids of the answer type's two labels, computed once per loaded model and kept on it
    (not keyed by id(), which a later model could reuse)."""
    cache = getattr(llm, "_der_label_ids", None)
    if cache is None:
        cache = llm._der_label_ids = {}
    if answer_type not in cache:
        first, second = LABEL_WORDS[answer_type]
        cache[answer_type] = (word_token_ids(llm, first), word_token_ids(llm, second))
    return cache[answer_type]


def from_token_logprobs(tokens: list[tuple[str, float, dict[str, float]]], answer_type: str) -> AnswerConfidence:
    """The same features from a server's per-token logprobs (llama-server, vLLM): ``tokens`` holds, for each
    generated token, (its text, its logprob, the top alternatives {text: logprob}).

    Edge cases: leading tokens that are only whitespace are skipped (the stored answer is stripped);
    yes_prob is Y / (Y + N) over the label tokens *among the top alternatives* at the first answer token
    (a truncated sum: exact when both labels are in the top list, 0.5 when neither is); an answer with no
    token is EMPTY."""
    while tokens and not tokens[0][0].strip():
        tokens = tokens[1:]
    if not tokens:
        return EMPTY
    lps = np.array([lp for _, lp, _ in tokens], dtype=np.float64)
    yes_prob = None
    if answer_type in LABEL_WORDS:
        first, second = LABEL_WORDS[answer_type]
        alts = dict(tokens[0][2])
        alts.setdefault(tokens[0][0], tokens[0][1])
        y = sum(math.exp(lp) for t, lp in alts.items() if t.strip().lower() in first)
        n = sum(math.exp(lp) for t, lp in alts.items() if t.strip().lower() in second)
        yes_prob = y / (y + n) if y + n > 0 else 0.5
    return AnswerConfidence(yes_prob=yes_prob, first_prob=float(math.exp(lps[0])), mean_logprob=float(lps.mean()),
                            min_logprob=float(lps.min()), answer_tokens=len(tokens))

"""Answer parsers and each task's own metric.

- yes/no (BoolQ): the first of yes / no / true / false in the text decides;
  an answer that commits to neither is wrong.
- sentiment (SST-2): the first of positive / negative in the text decides; accuracy.
- span (HotpotQA, SQuAD): exact match and token F1 with the official normalisation
  (lowercase, strip punctuation and the articles a/an/the, collapse spaces),
  the best over the reference and its aliases (SQuAD: every gold answer).
  HotpotQA's official F1 gives 0 when either side is yes / no / noanswer and
  they differ; SQuAD v1.1's official script has no such rule (``span_rule``).
- number (GSM8K): the final number (after 'Answer:' / '####' / 'answer is' if
  present, else the last number), commas, currency and units dropped, compared
  numerically.
- summary (XSum): ROUGE-L F-measure (rouge-score, stemmed).

Besides the task score, each answer type may carry secondary metrics that are
reported but never rewarded (``SECONDARY``): exact match for spans, ROUGE-1 and
ROUGE-2 F-measure for summaries. They are NaN where an answer type has none.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

TASK_METRIC = {"yes_no": "accuracy", "span": "f1", "number": "numeric_match", "summary": "rougeL",
               "sentiment": "accuracy"}
SPAN_RULE = {"hotpotqa": "hotpotqa", "squad": "squad"}  # which official F1 a span dataset uses
SECONDARY_OF = {"span": ("exact_match",), "summary": ("rouge1", "rouge2")}

_YES_NO = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_ANSWER_TAG = re.compile(r"(?:final answer|answer|####|answer is)\s*[:：]?\s*", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def parse_yes_no(text: str) -> str:
    """'yes', 'no', or '' when the text commits to neither."""
    m = _YES_NO.search(text)
    if not m:
        return ""
    word = m.group(1).lower()
    return "yes" if word in ("yes", "true") else "no"


_SENTIMENT = re.compile(r"\b(positive|negative)\b", re.IGNORECASE)


def parse_sentiment(text: str) -> str:
    """'positive', 'negative', or '' when the text names neither."""
    m = _SENTIMENT.search(text)
    return m.group(1).lower() if m else ""


def parse_span(text: str) -> str:
    """The short answer: what follows the last 'Answer:' tag, else the first line, trimmed."""
    text = text.strip()
    tags = list(re.finditer(r"answer\s*[:：]\s*", text, re.IGNORECASE))
    if tags:
        text = text[tags[-1].end():]
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.strip().strip("*_`\"' ").rstrip(".").strip("*_`\"' ")


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def parse_number(text: str) -> str:
    """The final number as a plain string ('' if none): '1,234.50 dollars' -> '1234.5'. A LaTeX ``\\boxed{...}``
    is the model's own mark of its final answer, so the last one holding a number wins over any number after
    it ('\\boxed{5} ... for 30 days' -> '5')."""
    tail = text
    for boxed in reversed(_BOXED.findall(text)):
        nums = _NUMBER.findall(boxed)
        if nums:
            return _canon_number(nums[-1])
    tags = list(_ANSWER_TAG.finditer(text))
    if tags:
        after = text[tags[-1].end():].strip().split("\n")[0]
        nums = _NUMBER.findall(after)
        if nums:  # the tagged line's last number: 'Answer: 3 * 4 = 12' -> 12
            return _canon_number(nums[-1])
    nums = _NUMBER.findall(tail)
    return _canon_number(nums[-1]) if nums else ""


def _canon_number(s: str) -> str:
    s = s.replace(",", "")
    try:
        v = float(s)
    except ValueError:
        return ""
    if not math.isfinite(v):  # more digits than a float holds (a model looping on digits): compared exactly
        d = Decimal(s)
        return str(int(d)) if d == d.to_integral_value() else format(d, "f").rstrip("0")
    return str(int(v)) if v == int(v) else repr(v)


def canon_reference(reference: str) -> str:
    """A number answer's reference in the form ``parse_number`` gives; a reference that is not a finite number
    (prepare refuses one, so only a hand-edited table has it) is an error, not a query nobody can answer."""
    try:
        value = Decimal(reference.replace(",", "").strip())
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        raise ValueError(f"number reference {reference!r} is not a finite number; fix the dataset's file and "
                         f"rerun `der-pipeline prepare`")
    return _canon_number(reference.strip())


def normalize_answer(s: str) -> str:
    """HotpotQA / SQuAD official normalisation."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str, rule: str = "hotpotqa") -> float:
    """Official token F1: HotpotQA's (yes/no/noanswer must match exactly) or SQuAD v1.1's (``rule="squad"``)."""
    p, g = normalize_answer(prediction), normalize_answer(gold)
    special = ("yes", "no", "noanswer")
    if rule == "hotpotqa" and (p in special or g in special) and p != g:
        return 0.0
    pt, gt = p.split(), g.split()
    common = Counter(pt) & Counter(gt)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pt), same / len(gt)
    return 2 * precision * recall / (precision + recall)


_ROUGE = None


def rouge(prediction: str, gold: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measure (rouge-score, Porter-stemmed, as XSum papers report)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    return {k: float(v.fmeasure) for k, v in _ROUGE.score(gold, prediction).items()}


def rouge_l(prediction: str, gold: str) -> float:
    return rouge(prediction, gold)["rougeL"]


def parse_answer(text: str, answer_type: str) -> str:
    """The final answer a task metric reads from free text."""
    if answer_type == "yes_no":
        return parse_yes_no(text)
    if answer_type == "sentiment":
        return parse_sentiment(text)
    if answer_type == "span":
        return parse_span(text)
    if answer_type == "number":
        return parse_number(text)
    return " ".join(text.split())


@dataclass(frozen=True)
class TaskScore:
    parsed: str
    metric: str
    score: float
    secondary: dict[str, float] = field(default_factory=dict)  # names from SECONDARY_OF[answer_type]

    @property
    def exact_match(self) -> float | None:
        return self.secondary.get("exact_match")


def score_answer(answer: str, reference: str, answer_type: str, aliases: list[str] | None = None,
                 span_rule: str = "hotpotqa") -> TaskScore:
    """The task score of one answer; ``span_rule`` picks the official F1 of a span dataset (SPAN_RULE)."""
    golds = [reference, *(aliases or [])]
    if answer_type not in TASK_METRIC:
        raise ValueError(f"unknown answer_type {answer_type!r}")
    metric = TASK_METRIC[answer_type]
    parsed = parse_answer(answer, answer_type)
    if answer_type in ("yes_no", "sentiment"):
        return TaskScore(parsed, metric, float(parsed != "" and parsed == reference.strip().lower()))
    if answer_type == "span":
        return TaskScore(parsed, metric, max(token_f1(parsed, g, span_rule) for g in golds),
                         {"exact_match": max(exact_match(parsed, g) for g in golds)})
    if answer_type == "number":
        gold = canon_reference(reference)
        return TaskScore(parsed, metric, float(parsed != "" and parsed == gold))
    # the gold summary with the best ROUGE-L decides all three, so they describe one comparison
    best = max((rouge(parsed, g) for g in golds), key=lambda r: r["rougeL"])
    return TaskScore(parsed, metric, best["rougeL"], {"rouge1": best["rouge1"], "rouge2": best["rouge2"]})

"""Task prompts and the Knowledge Transfer Prompt (KTP).

Chat models get a user message rendered by their own chat template; base models
get a few-shot completion prompt with stop sequences. In every hop-2 prompt the
task, context and question come *before* the previous answer, so all
refinements of one query by one expert share a prompt prefix and llama.cpp
reuses its KV cache across them.

A node's key is a hash of its rendered prompt (experts/keys.py), so editing any
prompt here regenerates exactly the nodes whose prompt changed: no version to bump.
"""
from __future__ import annotations

from dataclasses import dataclass, field

INSTRUCTIONS = {
    "yes_no": "Read the passage and answer the question with yes or no. "
              "Start your reply with 'Yes' or 'No', then give one short reason.",
    "span": "Read the paragraphs and answer the question with a short phrase "
            "(a name, date, number or a few words), not a full sentence. Reply in the form 'Answer: <short answer>'.",
    "number": "Solve the math problem step by step, briefly. End with a final line 'Answer: <number>'.",
    "summary": "Summarise the article in one sentence.",
    "sentiment": "Read the movie review and say whether its sentiment is positive or negative. "
                 "Start your reply with 'Positive' or 'Negative', then give one short reason.",
}

FORMAT_REMINDERS = {
    "yes_no": "Start your reply with 'Yes' or 'No', then give one short reason.",
    "span": "Reply in the form 'Answer: <short answer>'.",
    "number": "Solve it step by step, briefly, and end with a final line 'Answer: <number>'.",
    "summary": "Write your summary as one sentence.",
    "sentiment": "Start your reply with 'Positive' or 'Negative', then give one short reason.",
}

KTP_GUIDANCE = (
    "Below is an answer written by another student. Use it as helpful guidance, not as an instruction: "
    "it may be wrong. Reason critically, correct it where it is wrong, and write one complete answer of "
    "your own. Do not mention the other student."
)

CONTEXT_LABELS = {"yes_no": "Passage", "span": "Paragraphs", "number": "", "summary": "Article", "sentiment": "Review"}

# Few-shot examples for base (completion) models: (context, question, answer, a student answer for the KTP)
FEW_SHOT = {
    "yes_no": [
        ("Eiffel Tower: The Eiffel Tower is a wrought-iron lattice tower in Paris, France, completed in 1889.",
         "Is the Eiffel Tower in Paris?", "yes", "no, it is in London."),
        ("Penguin: Penguins are flightless seabirds that live almost exclusively in the Southern Hemisphere.",
         "Can penguins fly?", "no", "no"),
    ],
    "span": [
        ("Blue Whale: The blue whale is a marine mammal and the largest animal known to have ever existed.\n"
         "Krill: Krill are small crustaceans eaten by whales.",
         "What is the largest animal known to have ever existed?", "the blue whale", "krill"),
        ("Ada Lovelace: Ada Lovelace was an English mathematician born in London in 1815.",
         "In which year was Ada Lovelace born?", "1815", "1815"),
    ],
    "number": [
        ("", "Tom has 3 boxes with 4 apples each. He eats 2 apples. How many apples are left?",
         "3 * 4 = 12 apples. 12 - 2 = 10. The answer is 10", "The answer is 12"),
    ],
    "summary": [
        ("The city council approved a new park on Monday. Work will start in spring and cost 2 million pounds.",
         "Summarise the article in one sentence.",
         "A new park costing 2 million pounds was approved by the city council.",
         "The council met on Monday."),
    ],
    "sentiment": [
        ("a warm , funny and beautifully acted film .", "Is the sentiment of this movie review positive or negative?",
         "positive", "negative"),
        ("the plot is thin and the jokes fall flat .", "Is the sentiment of this movie review positive or negative?",
         "negative", "negative"),
    ],
}

STOPS = {"yes_no": ["\n"], "span": ["\n"], "number": ["\n\n", "Question:"], "summary": ["\n"], "sentiment": ["\n"]}


@dataclass(frozen=True)
class Prompt:
    """One request to an expert: chat messages or completion text."""

    kind: str  # "chat" | "completion"
    max_tokens: int
    messages: tuple[dict, ...] = ()
    text: str = ""
    stop: tuple[str, ...] = field(default_factory=tuple)
    answer_type: str = ""  # what the answer is (yes_no, span, ...): which confidence signals apply


def _task_block(question: str, context: str, answer_type: str) -> str:
    label = CONTEXT_LABELS[answer_type]
    parts = [INSTRUCTIONS[answer_type], ""]
    if context:
        parts += [f"{label}:", context, ""]
    parts.append(f"Question: {question}")
    return "\n".join(parts)


def clean_previous(answer: str, limit: int = 600) -> str:
    """The previous answer as shown to the next expert: trimmed, never empty."""
    text = " ".join(answer.split())[:limit]
    return text if text else "(no answer)"


def chat_prompt(question: str, context: str, answer_type: str, max_tokens: int, previous: str | None = None) -> Prompt:
    body = _task_block(question, context, answer_type)
    if previous is not None:
        body += "\n\n" + KTP_GUIDANCE + "\n\nAnother student's answer: " + clean_previous(previous)
        body += "\n\n" + FORMAT_REMINDERS[answer_type]
    return Prompt(kind="chat", max_tokens=max_tokens, messages=({"role": "user", "content": body},),
                  answer_type=answer_type)


def _shot(ctx: str, q: str, answer_type: str) -> str:
    label = CONTEXT_LABELS[answer_type]
    head = f"{label}: {ctx}\n" if ctx else ""
    return f"{head}Question: {q}\n"


def completion_prompt(question: str, context: str, answer_type: str, max_tokens: int,
                      previous: str | None = None) -> Prompt:
    blocks = []
    for ctx, q, gold, student in FEW_SHOT[answer_type]:
        if previous is None:
            blocks.append(_shot(ctx, q, answer_type) + f"Answer: {gold}")
        else:
            blocks.append(_shot(ctx, q, answer_type)
                          + f"Another student's answer (may be wrong): {student}\nCorrect answer: {gold}")
    query = _shot(context, question, answer_type)
    if previous is None:
        query += "Answer:"
    else:
        query += f"Another student's answer (may be wrong): {clean_previous(previous, 200)}\nCorrect answer:"
    blocks.append(query)
    return Prompt(kind="completion", max_tokens=max_tokens, text="\n\n".join(blocks),
                  stop=tuple(STOPS[answer_type]), answer_type=answer_type)


def build_prompt(chat: bool, question: str, context: str, answer_type: str, max_tokens: int,
                 previous: str | None = None) -> Prompt:
    make = chat_prompt if chat else completion_prompt
    return make(question, context, answer_type, max_tokens, previous)

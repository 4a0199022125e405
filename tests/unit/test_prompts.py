"""The prompts the experts get, to the character: a question at hop 1 and its Knowledge Transfer Prompt at hop 2,
for chat models (one user message) and base models (few-shot completion text); and the order that lets every
refinement of a query share its prompt prefix (task, context and question first, the previous answer last)."""
from der_pipeline.experts.keys import render_prompt
from der_pipeline.experts.prompts import Prompt, build_prompt, clean_previous

QUESTION = "Is the sky blue?"
CONTEXT = "Sky: The sky looks blue on a clear day."
PREVIOUS = "  No,\n it is   green.  "  # as an expert wrote it: whitespace is collapsed before it is shown

CHAT_HOP1 = (
    "Read the passage and answer the question with yes or no. Start your reply with 'Yes' or 'No', then give one "
    "short reason.\n"
    "\n"
    "Passage:\n"
    "Sky: The sky looks blue on a clear day.\n"
    "\n"
    "Question: Is the sky blue?")

CHAT_HOP2 = CHAT_HOP1 + (
    "\n"
    "\n"
    "Below is an answer written by another student. Use it as helpful guidance, not as an instruction: it may be "
    "wrong. Reason critically, correct it where it is wrong, and write one complete answer of your own. Do not "
    "mention the other student.\n"
    "\n"
    "Another student's answer: No, it is green.\n"
    "\n"
    "Start your reply with 'Yes' or 'No', then give one short reason.")

COMPLETION_HOP1 = (
    "Passage: Eiffel Tower: The Eiffel Tower is a wrought-iron lattice tower in Paris, France, completed in 1889.\n"
    "Question: Is the Eiffel Tower in Paris?\n"
    "Answer: yes\n"
    "\n"
    "Passage: Penguin: Penguins are flightless seabirds that live almost exclusively in the Southern Hemisphere.\n"
    "Question: Can penguins fly?\n"
    "Answer: no\n"
    "\n"
    "Passage: Sky: The sky looks blue on a clear day.\n"
    "Question: Is the sky blue?\n"
    "Answer:")

COMPLETION_HOP2 = (
    "Passage: Eiffel Tower: The Eiffel Tower is a wrought-iron lattice tower in Paris, France, completed in 1889.\n"
    "Question: Is the Eiffel Tower in Paris?\n"
    "Another student's answer (may be wrong): no, it is in London.\n"
    "Correct answer: yes\n"
    "\n"
    "Passage: Penguin: Penguins are flightless seabirds that live almost exclusively in the Southern Hemisphere.\n"
    "Question: Can penguins fly?\n"
    "Another student's answer (may be wrong): no\n"
    "Correct answer: no\n"
    "\n"
    "Passage: Sky: The sky looks blue on a clear day.\n"
    "Question: Is the sky blue?\n"
    "Another student's answer (may be wrong): No, it is green.\n"
    "Correct answer:")


def test_chat_prompt_hop_1_and_its_ktp_at_hop_2_exactly():
    assert build_prompt(True, QUESTION, CONTEXT, "yes_no", 12) == Prompt(
        kind="chat", max_tokens=12, messages=({"role": "user", "content": CHAT_HOP1},), answer_type="yes_no")
    assert build_prompt(True, QUESTION, CONTEXT, "yes_no", 12, previous=PREVIOUS) == Prompt(
        kind="chat", max_tokens=12, messages=({"role": "user", "content": CHAT_HOP2},), answer_type="yes_no")


def test_completion_prompt_hop_1_and_its_ktp_at_hop_2_exactly():
    assert build_prompt(False, QUESTION, CONTEXT, "yes_no", 12) == Prompt(
        kind="completion", max_tokens=12, text=COMPLETION_HOP1, stop=("\n",), answer_type="yes_no")
    assert build_prompt(False, QUESTION, CONTEXT, "yes_no", 12, previous=PREVIOUS) == Prompt(
        kind="completion", max_tokens=12, text=COMPLETION_HOP2, stop=("\n",), answer_type="yes_no")


def test_a_task_without_context_has_no_context_block():
    hop1 = build_prompt(True, "What is 2 + 3?", "", "number", 384)
    assert hop1.messages[0]["content"] == ("Solve the math problem step by step, briefly. End with a final line "
                                           "'Answer: <number>'.\n\nQuestion: What is 2 + 3?")
    assert build_prompt(False, "What is 2 + 3?", "", "number", 384).text.endswith(
        "\n\nQuestion: What is 2 + 3?\nAnswer:")  # no "label:" line before the question


def test_the_ktp_puts_the_previous_answer_last_so_refinements_share_the_prefix():
    a = build_prompt(True, QUESTION, CONTEXT, "yes_no", 12, previous="Yes.").messages[0]["content"]
    b = build_prompt(True, QUESTION, CONTEXT, "yes_no", 12, previous="No, it is green.").messages[0]["content"]
    shared = CHAT_HOP2.split("Another student's answer: ")[0] + "Another student's answer: "
    assert a.startswith(shared) and b.startswith(shared) and a[len(shared):] != b[len(shared):]
    # hop 1's whole prompt is the start of every hop 2 prompt of the same query (llama.cpp reuses its KV cache)
    assert a.startswith(CHAT_HOP1) and b.startswith(CHAT_HOP1)
    # task, context, question, guidance, the other answer, then the format reminder (the instruction's own
    # sentence, repeated last)
    order = [CHAT_HOP2.index(s) for s in ("Read the passage", "Passage:\n", CONTEXT, "Question: ", "Below is an answer",
                                          "Another student's answer: ", "No, it is green.")]
    assert order == sorted(order) and CHAT_HOP2.rindex("Start your reply") > order[-1]
    c = build_prompt(False, QUESTION, CONTEXT, "yes_no", 12, previous="Yes.").text
    d = build_prompt(False, QUESTION, CONTEXT, "yes_no", 12, previous="No.").text
    tail = "Another student's answer (may be wrong): "
    assert c.rsplit(tail, 1)[0] == d.rsplit(tail, 1)[0] == COMPLETION_HOP2.rsplit(tail, 1)[0]


def test_the_previous_answer_is_collapsed_trimmed_and_never_empty():
    assert clean_previous("  a\n\tb  ") == "a b"
    assert clean_previous(" \n ") == "(no answer)"
    assert clean_previous("x" * 700) == "x" * 600
    long = build_prompt(False, QUESTION, CONTEXT, "yes_no", 12, previous="y" * 300).text
    assert long.endswith("Another student's answer (may be wrong): " + "y" * 200 + "\nCorrect answer:")


def test_render_prompt_takes_the_query_and_the_answer_types_token_budget(repo_params):
    query = {"question": QUESTION, "context": CONTEXT, "answer_type": "yes_no"}
    chat = next(e for e in repo_params.experts if e.chat)
    budget = repo_params.generation.max_tokens["yes_no"]
    assert render_prompt(repo_params, chat, query) == build_prompt(True, QUESTION, CONTEXT, "yes_no", budget)
    assert render_prompt(repo_params, chat, query, PREVIOUS).messages[0]["content"] == CHAT_HOP2

import pytest

from der_pipeline.signals.metrics import (
    exact_match,
    normalize_answer,
    parse_number,
    parse_span,
    parse_yes_no,
    score_answer,
    token_f1,
)


@pytest.mark.parametrize("text, want", [
    ("Yes, the passage says so.", "yes"),
    ("yes", "yes"),
    ("No. It is not.", "no"),
    ("NO", "no"),
    ("True - ethanol takes more energy.", "yes"),
    ("false", "no"),
    ("The answer is no, because the tax differs.", "no"),
    ("Answer: yes", "yes"),
    ("**Yes**", "yes"),
    ("I think it's not clear.", ""),
    ("Nobody knows; yesterday it rained.", ""),  # words containing yes/no do not count
    ("", ""),
])
def test_parse_yes_no(text, want):
    assert parse_yes_no(text) == want


def test_yes_no_that_commits_to_neither_is_wrong():
    assert score_answer("It depends on the context.", "no", "yes_no").score == 0.0
    assert score_answer("No, it does not.", "no", "yes_no").score == 1.0
    assert score_answer("Yes it does", "no", "yes_no").score == 0.0


@pytest.mark.parametrize("text, want", [
    ("The answer is 18.", "18"),
    ("She makes $1,234 per day.", "1234"),
    ("3 * 4 = 12 apples. Answer: 12 apples", "12"),
    ("Answer: 3 * 4 = 12", "12"),
    ("#### 72", "72"),
    ("It costs 2.50 dollars", "2.5"),
    ("Answer: -7\n\nCheck: 3 + 4 = 7", "-7"),
    ("the total is 40.0", "40"),
    ("no numbers here", ""),
    ("Answer: " + "9" * 400, "9" * 400),  # a model looping on digits: past a float's range, compared exactly
    ("Answer: " + "1" * 320 + ".50", "1" * 320 + ".5"),
])
def test_parse_number(text, want):
    assert parse_number(text) == want


def test_numeric_match():
    assert score_answer("... so the answer is 1,000", "1000", "number").score == 1.0
    assert score_answer("Answer: 999", "1000", "number").score == 0.0


def test_hotpot_normalisation_and_f1():
    assert normalize_answer("The  Beatles!") == "beatles"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert exact_match("the Blue Whale.", "blue whale") == 1.0
    assert exact_match("blue whales", "blue whale") == 0.0
    assert token_f1("beer and whisky", "beer and whisky") == 1.0
    assert token_f1("beer", "beer and whisky") == pytest.approx(0.5)
    assert token_f1("yes", "no") == 0.0
    assert token_f1("", "x") == 0.0


@pytest.mark.parametrize("text, want", [
    ("Answer: Michael Jackson", "Michael Jackson"),
    ("Michael Jackson.\nHe wrote about beer.", "Michael Jackson"),
    ("Some reasoning. Answer: **1815**.", "1815"),
])
def test_parse_span(text, want):
    assert parse_span(text) == want


def test_span_score_takes_best_alias():
    s = score_answer("Answer: NYC", "New York City", "span", aliases=["NYC"])
    assert s.score == 1.0 and s.exact_match == 1.0


def test_rouge_l_summary():
    s = score_answer("a new park was approved", "the council approved a new park", "summary")
    assert 0.3 < s.score < 1.0
    assert score_answer("zzz", "the council approved a new park", "summary").score == 0.0


@pytest.mark.parametrize("text, want", [
    ("Positive. The review praises the acting.", "positive"),
    ("NEGATIVE", "negative"),
    ("The sentiment is negative, not positive.", "negative"),  # the first label named decides
    ("It is mixed.", ""),
    ("Positively dreadful.", ""),  # a word containing the label does not count
])
def test_parse_sentiment(text, want):
    from der_pipeline.signals.metrics import parse_sentiment

    assert parse_sentiment(text) == want
    assert score_answer(text, "negative", "sentiment").score == float(want == "negative")


def test_squad_official_metric_on_its_known_cases():
    """The official SQuAD v1.1 evaluate script: normalise (lowercase, drop punctuation and a/an/the, collapse
    spaces), then EM and token F1, the best over every gold answer."""
    golds = ["Denver Broncos", "the Denver Broncos", "Broncos"]
    s = score_answer("Answer: The Denver Broncos.", golds[0], "span", golds[1:], span_rule="squad")
    assert (s.parsed, s.score, s.exact_match) == ("The Denver Broncos", 1.0, 1.0)
    s = score_answer("Answer: Broncos team", golds[0], "span", golds[1:], span_rule="squad")
    # vs 'Broncos': precision 1/2, recall 1 -> F1 2/3 (the best gold); no exact match
    assert s.score == pytest.approx(2 / 3) and s.exact_match == 0.0
    assert score_answer("Answer: Carolina Panthers", golds[0], "span", golds[1:], span_rule="squad").score == 0.0
    # SQuAD has no yes/no rule: partial credit where HotpotQA's official F1 gives 0
    assert token_f1("yes", "yes sir", rule="squad") == pytest.approx(2 / 3)
    assert token_f1("yes", "yes sir", rule="hotpotqa") == 0.0
    assert normalize_answer("  A   Tale of Two Cities!! ") == "tale of two cities"


def test_rouge_l_on_a_hand_computed_pair():
    from der_pipeline.signals.metrics import rouge_l

    # reference 'the cat sat on the mat' (6 tokens), candidate 'the cat lay on the mat' (6 tokens):
    # LCS = the cat on the mat (5): P = R = 5/6 -> F = 5/6
    assert rouge_l("the cat lay on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    # 'cat the' against 'the cat': LCS 1 of 2 tokens each -> 0.5
    assert rouge_l("cat the", "the cat") == pytest.approx(0.5)


def test_rouge_1_2_on_a_hand_computed_pair():
    """ROUGE-N F = 2PR/(P+R) over clipped n-gram overlap (rouge-score, stemmed)."""
    from der_pipeline.signals.metrics import rouge

    # candidate 'the cat lay on the mat' vs reference 'the cat sat on the mat'
    # unigrams: 5 of 6 shared (the x2, cat, on, mat) -> 5/6; bigrams: the-cat, on-the, the-mat = 3 of 5 -> 3/5
    r = rouge("the cat lay on the mat", "the cat sat on the mat")
    assert r["rouge1"] == pytest.approx(5 / 6) and r["rouge2"] == pytest.approx(3 / 5)
    assert r["rougeL"] == pytest.approx(5 / 6)
    # stemming: 'cats' / 'cat', 'running' / 'run'
    assert rouge("cats running", "cat run")["rouge1"] == pytest.approx(1.0)


def test_summary_score_carries_rouge_1_2_of_the_best_gold():
    s = score_answer("the cat lay on the mat", "a dog barked", "summary", aliases=["the cat sat on the mat"])
    assert s.score == pytest.approx(5 / 6)
    assert s.secondary == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5})
    assert s.exact_match is None
    # span answers carry exact match only; yes/no none
    assert set(score_answer("Answer: Paris", "Paris", "span").secondary) == {"exact_match"}
    assert score_answer("yes", "yes", "yes_no").secondary == {}


def test_a_boxed_answer_is_the_final_number():
    """gsm8k-test-413's answer: the model boxed 5 and then wrote on ("... for 30 days")."""
    from der_pipeline.signals.metrics import parse_number

    assert parse_number(r"So she needs \boxed{5} bags, which last for 30 days.") == "5"
    assert parse_number(r"\boxed{1} at first, then \boxed{1,200.50}; 7 more") == "1200.5"  # the last box
    assert parse_number(r"\boxed{x} and the answer is 9") == "9"  # a box with no number does not count
    assert parse_number("Answer: 3 * 4 = 12") == "12"

import pytest

from der_pipeline.signals.metrics import (exact_match, normalize_answer, parse_number, parse_span, parse_yes_no,
                                          score_answer, token_f1)


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

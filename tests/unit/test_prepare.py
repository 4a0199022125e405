import dataclasses
import json
import re

import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA

from der_pipeline.artifacts import load_prepared
from der_pipeline.data.prepare import hotpot_context, prepare, split_of
from der_pipeline.data.sources import SourceError, read_records
from der_pipeline.io import SchemaError, read_table
from der_pipeline.schemas import PREPARED


def local(p, tmp_path, **datasets):
    p = p.override("paths", source_data=str(SHARED_DATA), data=str(tmp_path / "data"))
    return p.override("data", datasets={k: {"sample": datasets.get(k, 0)} for k in {*p.data.datasets, *datasets}})


def test_prepare_writes_the_canonical_schema(repo_params, tmp_path):
    p = local(repo_params, tmp_path, boolq=40, hotpotqa=20, gsm8k=10, xsum=5)
    out = prepare(p)
    assert set(out) == {"boolq", "hotpotqa", "gsm8k", "xsum"}
    for name in out:
        t = load_prepared(p, name)
        assert t.schema.equals(PREPARED, check_metadata=False)
        assert len(set(t["qid"].to_pylist())) == t.num_rows
        assert set(t["split"].to_pylist()) <= {"train", "test"}
    b = load_prepared(p, "boolq").to_pylist()
    assert len(b) == 40 and {r["reference"] for r in b} == {"yes", "no"}
    assert all(r["answer_type"] == "yes_no" and r["question"].endswith("?") for r in b)
    g = load_prepared(p, "gsm8k").to_pylist()
    assert all(r["reference"].lstrip("-").replace(".", "").isdigit() for r in g)


def test_split_is_stable_and_seeded():
    ids = [f"boolq-{i}" for i in range(400)]
    a = [split_of(q, 13, 0.3) for q in ids]
    assert a == [split_of(q, 13, 0.3) for q in ids]
    b = [split_of(q, 14, 0.3) for q in ids]
    assert a != b
    assert 0.2 < a.count("test") / len(a) < 0.4


def test_larger_sample_contains_smaller_and_keeps_splits(repo_params, tmp_path):
    small = local(repo_params, tmp_path / "s", boolq=30)
    big = local(repo_params, tmp_path / "b", boolq=90)
    prepare(small), prepare(big)
    s = {r["qid"]: r["split"] for r in load_prepared(small, "boolq").to_pylist()}
    b = {r["qid"]: r["split"] for r in load_prepared(big, "boolq").to_pylist()}
    assert set(s) < set(b)
    assert all(b[q] == s[q] for q in s)


def test_hotpot_context_budget_keeps_gold_and_supporting_facts():
    recs = [r for _, r in read_records(SHARED_DATA, "hotpotqa")][:30]
    over = 0
    for rec in recs:
        ctx = hotpot_context(rec, seed=13, distractors=2, max_chars=1200)
        lines = ctx.split("\n")
        assert len(lines) == 4  # 2 gold + 2 distractors
        for title, idx in rec["supporting_facts"]:
            assert any(ln.startswith(title + ": ") for ln in lines)
            sents = dict((t, s) for t, s in rec["context"])[title]
            if idx < len(sents):
                assert sents[idx].strip() in ctx
        if len(ctx) > 1200:  # over budget only when nothing but supporting sentences is left
            kept = sum(len(" ".join(sents)) for t, sents in rec["context"]
                       if any(t == f[0] for f in rec["supporting_facts"]))
            support_len = sum(len(dict(rec["context"])[t][i]) for t, i in rec["supporting_facts"]
                              if i < len(dict(rec["context"])[t]))
            assert len(ctx) <= support_len + 400, (len(ctx), support_len, kept)
        over += len(ctx) > 1200
    assert over <= 3
    a = hotpot_context(recs[0], seed=13, distractors=2, max_chars=5000)
    assert a == hotpot_context(recs[0], seed=13, distractors=2, max_chars=5000)
    assert len(hotpot_context(recs[0], seed=13, distractors=0, max_chars=5000).split("\n")) == 2


def test_malformed_record_names_file_line_field_and_leaves_no_output(repo_params, tmp_path):
    src = tmp_path / "src" / "boolq"
    src.mkdir(parents=True)
    good = (SHARED_DATA / "boolq" / "dev.jsonl").read_text().splitlines()[:5]
    bad = json.loads(good[2])
    bad["answer"] = "maybe"
    lines = good[:2] + [json.dumps(bad)] + good[3:]
    (src / "dev.jsonl").write_text("\n".join(lines) + "\n")
    p = local(repo_params, tmp_path, boolq=3)
    p = dataclasses.replace(p, paths=dataclasses.replace(p.paths, source_data=str(tmp_path / "src")))
    with pytest.raises(SourceError) as err:
        prepare(p)
    msg = str(err.value)
    assert "dev.jsonl:3" in msg and "'answer'" in msg
    assert not (tmp_path / "data" / "prepared" / "boolq.parquet").exists()
    assert not list((tmp_path / "data").rglob("*.tmp")) if (tmp_path / "data").exists() else True

    (src / "dev.jsonl").write_text(good[0] + "\n{not json\n")
    with pytest.raises(SourceError, match=r"dev.jsonl:2: not valid JSON"):
        prepare(p)


def test_missing_source_file_says_where_it_looked(repo_params, tmp_path):
    p = local(repo_params, tmp_path, boolq=3)
    p = dataclasses.replace(p, paths=dataclasses.replace(p.paths, source_data=str(tmp_path / "nowhere")))
    with pytest.raises(SourceError) as err:
        prepare(p)
    assert str(tmp_path / "nowhere") in str(err.value) and "paths.source_data" in str(err.value)


def test_reading_a_table_checks_its_schema(tmp_path):
    import pyarrow as pa

    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"qid": ["a"], "dataset": ["boolq"]}), path)
    with pytest.raises(SchemaError, match="missing column"):
        read_table(path, PREPARED)


def _source(tmp_path, relpath, records):
    path = tmp_path / "src" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path / "src"


def test_sst2_preparation_on_hand_made_records(repo_params, tmp_path):
    src = _source(tmp_path, "sst2/dev.jsonl", [{"idx": 7, "sentence": "a  gorgeous , witty film . ", "label": 1},
                                               {"idx": 8, "sentence": "dull .", "label": 0}])
    p = local(repo_params, tmp_path, sst2=2).override("paths", source_data=str(src))
    prepare(p)
    rows = {r["qid"]: r for r in load_prepared(p, "sst2").to_pylist()}
    assert rows["sst2-7"]["context"] == "a gorgeous , witty film ." and rows["sst2-7"]["reference"] == "positive"
    assert rows["sst2-8"]["reference"] == "negative" and rows["sst2-8"]["answer_type"] == "sentiment"
    bad = _source(tmp_path, "sst2/dev.jsonl", [{"idx": 1, "sentence": "ok", "label": 2}])
    with pytest.raises(SourceError, match=r"dev.jsonl:1: field 'label' is 2"):
        prepare(p.override("paths", source_data=str(bad)))


def test_squad_preparation_keeps_every_gold_answer_and_the_answers_sentence(repo_params, tmp_path):
    filler = " ".join(f"Filler sentence number {i} says nothing at all." for i in range(60))
    context = filler + " The castle was built in 1066 by the king. " + filler
    start = context.index("1066")
    rec = {"id": "abc", "title": "Old_Castle", "context": context, "question": "when was the castle built",
           "answers": ["1066", "in 1066", "1066"], "answer_starts": [start, start - 3, start]}
    p = local(repo_params, tmp_path, squad=1).override(
        "paths", source_data=str(_source(tmp_path, "squad/dev.jsonl", [rec])))
    prepare(p)
    row = load_prepared(p, "squad").to_pylist()[0]
    assert row["qid"] == "squad-abc" and row["question"] == "When was the castle built?"
    assert row["reference"] == "1066" and row["aliases"] == ["in 1066"]  # distinct golds, the first as reference
    assert row["context"].startswith("Old Castle: ") and "built in 1066 by the king." in row["context"]
    assert len(row["context"]) <= p.data.max_context_chars and len(context) > 2 * p.data.max_context_chars
    rec["answer_starts"] = [0, 0, 0]
    bad = _source(tmp_path, "squad/dev.jsonl", [rec])
    with pytest.raises(SourceError, match=r"dev.jsonl:1: answer '1066' is not at offset 0"):
        prepare(p.override("paths", source_data=str(bad)))


def custom(repo_params, tmp_path, lines, answer_type="span", sample=None):
    """``mine``: a custom dataset of ``lines``, sampling all of them by default (a larger sample is refused)."""
    sample = len(lines) if sample is None else sample
    path = tmp_path / "mine.jsonl"
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    p = local(repo_params, tmp_path)
    return p.override("data", datasets={**{k: {"sample": 0} for k in p.data.datasets},
                                        "mine": {"sample": sample, "source": str(path), "answer_type": answer_type}})


def test_a_custom_dataset_is_prepared_from_any_jsonl(repo_params, tmp_path):
    p = custom(repo_params, tmp_path, [
        {"id": "a1", "question": "who wrote hamlet", "context": "Hamlet is a tragedy by William Shakespeare.",
         "reference": "William Shakespeare", "aliases": ["Shakespeare"]},
        {"question": "What is the capital of France?", "reference": "Paris"},
    ])
    out = prepare(p)
    assert set(out) == {"mine"}
    rows = {r["qid"]: r for r in load_prepared(p, "mine").to_pylist()}
    assert set(rows) == {"mine-a1", "mine-2"}  # the id, or the line number
    assert rows["mine-a1"]["question"] == "Who wrote hamlet?" and rows["mine-a1"]["aliases"] == ["Shakespeare"]
    assert rows["mine-2"]["context"] == "" and rows["mine-2"]["answer_type"] == "span"
    from der_pipeline.data.sources import answer_type_of

    assert answer_type_of(p, "mine") == "span" and answer_type_of(p, "boolq") == "yes_no"


@pytest.mark.parametrize("lines, answer_type, where", [
    (['{"question": "q?", "reference": "yes"}', "{oops"], "yes_no", "mine.jsonl:2: not valid JSON"),
    ([{"question": "q?"}], "span", "mine.jsonl:1: field 'reference' must be a non-empty string"),
    ([{"question": " ", "reference": "x"}], "span", "mine.jsonl:1: field 'question'"),
    ([{"question": "q?", "reference": "maybe"}], "yes_no", "mine.jsonl:1: field 'reference' is 'maybe'"),
    ([{"question": "q?", "reference": "ten"}], "number", "not a number"),
    ([{"question": "q?", "reference": "x", "answer": "x"}], "span", "unknown field 'answer'"),
    ([{"question": "q?", "reference": "x", "aliases": "y"}], "span", "'aliases' must be a list"),
    ([{"id": 1, "question": "q?", "reference": "x"}, {"id": "1", "question": "r?", "reference": "y"}], "span",
     "mine.jsonl:2: id '1' already used on line 1"),
])
def test_a_malformed_custom_record_names_file_line_and_field(repo_params, tmp_path, lines, answer_type, where):
    p = custom(repo_params, tmp_path, lines, answer_type)
    with pytest.raises(SourceError, match=re.escape(where)):
        prepare(p)
    assert not list((tmp_path / "data").rglob("*.parquet"))  # nothing partial written


def test_custom_dataset_declarations_are_checked(repo_params, tmp_path):
    from der_pipeline.config import ConfigError

    base = {k: {"sample": 0} for k in repo_params.data.datasets}
    for spec, key in [({"sample": 5, "answer_type": "span"}, "data.datasets.mine.source"),
                      ({"sample": 5, "source": "x.jsonl"}, "data.datasets.mine.answer_type"),
                      ({"sample": 5, "source": "x.jsonl", "answer_type": "poem"}, "data.datasets.mine.answer_type"),
                      ({"sample": 5, "source": "x.csv", "answer_type": "span"}, "data.datasets.mine.source")]:
        with pytest.raises(ConfigError, match=re.escape(key)):
            repo_params.override("data", datasets={**base, "mine": spec})
    with pytest.raises(ConfigError, match=re.escape("data.datasets.boolq.source")):
        repo_params.override("data", datasets={**base, "boolq": {"sample": 5, "source": "x.jsonl"}})
    with pytest.raises(ConfigError, match=re.escape("data.datasets.My-Data")):
        repo_params.override("data", datasets={**base, "My-Data": {"sample": 5, "source": "x.jsonl",
                                                                    "answer_type": "span"}})


def test_a_test_file_of_its_own_is_the_test_split(repo_params, tmp_path):
    """SST-2 names its 1,821-sentence test file: the dev sentences are all train, the test file's are all test,
    with ids that cannot collide with dev's, and the sampled test queries are the same at every size."""
    p = local(repo_params, tmp_path)
    p = p.override("data", datasets={"sst2": {"sample": 20, "test_file": "sst2/test.jsonl", "test_sample": 30}})
    prepare(p)
    rows = load_prepared(p, "sst2").to_pylist()
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    assert len(train) == 20 and len(test) == 30
    assert all(re.fullmatch(r"sst2-\d+", r["qid"]) for r in train)
    assert all(re.fullmatch(r"sst2-test-\d+", r["qid"]) for r in test)
    by_idx = {rec["idx"]: rec for _, rec in read_records(SHARED_DATA, "sst2", relpath="sst2/test.jsonl")}
    for r in test:
        rec = by_idx[int(r["qid"].rsplit("-", 1)[1])]
        assert r["context"] == " ".join(rec["sentence"].split())
        assert r["reference"] == ("positive" if rec["label"] == 1 else "negative")
    bigger = p.override("data", datasets={"sst2": {"sample": 20, "test_file": "sst2/test.jsonl", "test_sample": 60}})
    bigger = bigger.override("paths", data=str(tmp_path / "data2"))
    prepare(bigger)
    big_test = {r["qid"] for r in load_prepared(bigger, "sst2").to_pylist() if r["split"] == "test"}
    assert {r["qid"] for r in test} < big_test


@pytest.mark.parametrize("spec, key", [({"sample": 5, "test_file": "sst2/test.jsonl"}, "test_sample"),
                                       ({"sample": 5, "test_sample": 3}, "test_sample"),
                                       ({"sample": 5, "test_file": "sst2/test.csv", "test_sample": 3}, "test_file")])
def test_a_test_file_needs_both_keys(repo_params, spec, key):
    from der_pipeline.config import ConfigError
    with pytest.raises(ConfigError, match=rf"data\.datasets\.sst2\.{key}"):
        repo_params.override("data", datasets={"sst2": spec})


def test_number_references_may_be_json_numbers_and_are_stored_as_strings(repo_params, tmp_path):
    p = custom(repo_params, tmp_path, [
        {"id": "a", "question": "How many legs have three spiders?", "reference": 24},
        {"id": "b", "question": "Half of three?", "reference": 1.5},
        {"id": "c", "question": "Twelve as a float?", "reference": 12.0},
        {"id": "d", "question": "A thousand and more?", "reference": "1,234"},
    ], answer_type="number")
    prepare(p)
    table = pq.read_table(tmp_path / "data" / "prepared" / "mine.parquet")
    assert table.schema.field("reference").type == "string"
    rows = {r["qid"]: r["reference"] for r in load_prepared(p, "mine").to_pylist()}
    assert rows == {"mine-a": "24", "mine-b": "1.5", "mine-c": "12", "mine-d": "1,234"}
    from der_pipeline.signals.metrics import score_answer

    assert score_answer("Answer: 24", rows["mine-a"], "number").score == 1.0
    assert score_answer("so 1.5", rows["mine-b"], "number").score == 1.0
    assert score_answer("1234 it is", rows["mine-d"], "number").score == 1.0
    for bad in ("nan", "inf", "Infinity"):  # a hand-edited table: an error naming it, not a crash or a silent 0
        with pytest.raises(ValueError, match=f"number reference '{bad}' is not a finite number"):
            score_answer("12", bad, "number")


@pytest.mark.parametrize("line", [
    '{"question": "q?", "reference": "nan"}', '{"question": "q?", "reference": "inf"}',
    '{"question": "q?", "reference": "-Infinity"}', '{"question": "q?", "reference": "NaN"}',
    '{"question": "q?", "reference": NaN}', '{"question": "q?", "reference": Infinity}',
    '{"question": "q?", "reference": 1e999}',
])
def test_a_non_finite_number_reference_is_refused(repo_params, tmp_path, line):
    p = custom(repo_params, tmp_path, ['{"question": "q?", "reference": "7"}', line], answer_type="number")
    with pytest.raises(SourceError, match=r"mine\.jsonl:2: field 'reference' is .*not a finite number"):
        prepare(p)
    assert not list((tmp_path / "data").rglob("*.parquet"))


def test_a_number_reference_of_another_type_is_refused(repo_params, tmp_path):
    for ref in (True, None, [1]):
        p = custom(repo_params, tmp_path, [{"question": "q?", "reference": ref}], answer_type="number")
        with pytest.raises(SourceError,
                           match=r"mine\.jsonl:1: field 'reference' must be a non-empty string or a number"):
            prepare(p)
    p = custom(repo_params, tmp_path, [{"question": "q?", "reference": 12}], answer_type="span")
    with pytest.raises(SourceError, match=r"mine\.jsonl:1: field 'reference' must be a non-empty string"):
        prepare(p)  # only a number answer may have a number reference


def _digest(folder):
    return {f.name: f.read_bytes() for f in sorted(folder.glob("*.parquet"))}


GOOD = [{"id": "a", "question": "Who wrote Hamlet?", "reference": "Shakespeare"},
        {"id": "b", "question": "Capital of France?", "reference": "Paris"}]


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_an_empty_source_is_refused_and_the_prepared_table_stays(repo_params, tmp_path, content):
    p = custom(repo_params, tmp_path, GOOD)
    prepare(p)
    before = _digest(tmp_path / "data" / "prepared")
    (tmp_path / "mine.jsonl").write_text(content)
    with pytest.raises(SourceError, match=r"mine: the file .*mine\.jsonl holds no records; nothing was written"):
        prepare(p)
    assert _digest(tmp_path / "data" / "prepared") == before
    assert not list((tmp_path / "data").rglob("*.tmp"))


def test_a_sample_larger_than_the_file_is_refused_and_the_prepared_table_stays(repo_params, tmp_path):
    p = custom(repo_params, tmp_path, GOOD)
    prepare(p)
    before = _digest(tmp_path / "data" / "prepared")
    big = custom(repo_params, tmp_path, GOOD, sample=1_000_000)
    with pytest.raises(SourceError) as err:
        prepare(big)
    msg = str(err.value)
    assert msg.startswith("mine: data.datasets.mine.sample is 1000000") and "holds only 2 records" in msg
    assert _digest(tmp_path / "data" / "prepared") == before


def test_a_benchmark_sample_or_test_sample_larger_than_its_file_is_refused(repo_params, tmp_path):
    p = local(repo_params, tmp_path, sst2=873)  # the validation split holds 872 sentences
    with pytest.raises(SourceError, match=r"sst2: data\.datasets\.sst2\.sample is 873 but .*dev\.jsonl holds only 872"):
        prepare(p)
    p = p.override("data", datasets={"sst2": {"sample": 5, "test_file": "sst2/test.jsonl", "test_sample": 1822}})
    with pytest.raises(SourceError, match=r"sst2: data\.datasets\.sst2\.test_sample is 1822 but the test file "
                                          r".*test\.jsonl holds only 1821"):
        prepare(p)
    assert not (tmp_path / "data" / "prepared").exists()


def test_params_sst2_sample_equal_to_its_file_still_prepares(repo_params, tmp_path):
    assert repo_params.data.datasets["sst2"].sample == 872
    p = local(repo_params, tmp_path, sst2=repo_params.data.datasets["sst2"].sample)
    prepare(p)
    assert load_prepared(p, "sst2").num_rows == 872


def test_one_bad_dataset_leaves_every_prepared_table_as_it_was(repo_params, tmp_path):
    p = custom(repo_params, tmp_path, GOOD)
    p = p.override("data", datasets={**{k: {"sample": s.sample} for k, s in p.data.datasets.items()},
                                     "boolq": {"sample": 5}})
    prepare(p)
    before = _digest(tmp_path / "data" / "prepared")
    assert set(before) == {"boolq.parquet", "mine.parquet"}
    (tmp_path / "mine.jsonl").write_text("")
    grown = p.override("data", datasets={**{k: {"sample": s.sample} for k, s in p.data.datasets.items()},
                                         "boolq": {"sample": 6}})
    with pytest.raises(SourceError, match="mine: "):
        prepare(grown)
    assert _digest(tmp_path / "data" / "prepared") == before  # boolq's table not rewritten either


def test_a_folder_or_a_binary_file_as_source_is_a_source_error(repo_params, tmp_path):
    p = custom(repo_params, tmp_path, GOOD)
    (tmp_path / "mine.jsonl").unlink()
    (tmp_path / "mine.jsonl").mkdir()
    with pytest.raises(SourceError, match=r"mine\.jsonl is not a file"):
        prepare(p)
    (tmp_path / "mine.jsonl").rmdir()
    (tmp_path / "mine.jsonl").write_bytes(json.dumps(GOOD[0]).encode() + b"\n\x89PNG\r\n\x1a\n\x00\xff\xfe\x00\n")
    with pytest.raises(SourceError, match=r"mine\.jsonl:2: not UTF-8 text"):
        prepare(p)
    assert not (tmp_path / "data" / "prepared").exists()

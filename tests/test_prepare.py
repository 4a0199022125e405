import re
import dataclasses
import json

import pyarrow.parquet as pq
import pytest

from der_pipeline.artifacts import load_prepared
from der_pipeline.data.prepare import hotpot_context, prepare, split_of
from der_pipeline.data.sources import SourceError, read_records
from der_pipeline.io import SchemaError, read_table
from der_pipeline.schemas import PREPARED

from conftest import SHARED_DATA


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
            kept = sum(len(" ".join(sents)) for t, sents in rec["context"] if any(t == f[0] for f in rec["supporting_facts"]))
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
    p = local(repo_params, tmp_path, squad=1).override("paths", source_data=str(_source(tmp_path, "squad/dev.jsonl", [rec])))
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


def custom(repo_params, tmp_path, lines, answer_type="span", sample=10):
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

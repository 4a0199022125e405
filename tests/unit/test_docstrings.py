"""No measured figure in a docstring or comment: a figure goes stale there unseen, so it lives in the docs
(docs/research-log.md, docs/benchmarks.md) beside the command that prints it. The check: no sentence of a
docstring or comment names a benchmark dataset together with a measured-looking number (a decimal or a
percentage)."""
import ast
import io
import re
import tokenize

from conftest import REPO

DATASET = re.compile(r"\b(BoolQ|SST-2|GSM8K|HotpotQA|SQuAD|XSum)\b", re.I)
FIGURE = re.compile(r"(?<![\w.])(\d+\.\d+|\d+(\.\d+)?%)(?![\w.])")


def _texts(path):
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield getattr(node, "lineno", 1), doc
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string


def test_no_docstring_or_comment_quotes_a_measured_figure():
    found = []
    for path in sorted((REPO / "der_pipeline").rglob("*.py")):
        for line, text in _texts(path):
            for sentence in re.split(r"(?<=[.;:])\s+", " ".join(text.split())):
                if DATASET.search(sentence) and FIGURE.search(sentence):
                    found.append(f"{path.relative_to(REPO)}:{line}: {sentence[:140]}")
    assert not found, "measured figures belong in the docs:\n" + "\n".join(found)

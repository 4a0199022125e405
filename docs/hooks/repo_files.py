"""MkDocs hook: the repository files the docs link to (the results' plots, the training curves, source files)
are served from where they are, so nothing is copied into docs/ and every link works on GitHub too.

A page links to a repository file by its path relative to the page, as on GitHub
(``../results/curves/boolq/cost_accuracy.png`` from docs/results.md). MkDocs knows only the files under
docs/, so this hook adds each linked file that exists to the site under ``repo/<its path>`` and points the
page's link there. A link to a file that does not exist (or to a Markdown file outside docs/) is left as
written, and the strict build fails on it.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

PREFIX = "repo"  # where the repository's linked files land in the site
LINK = re.compile(r"(\]\()([^)\s#]+)")  # a Markdown link's or image's target, up to its anchor or title


def _repository_file(config, page_uri: str, target: str) -> str | None:
    """The target's path in the repository (POSIX) if it leaves docs/ and names an existing file there."""
    if "://" in target or target.startswith(("/", "mailto:")):
        return None
    inside = posixpath.normpath(posixpath.join(posixpath.dirname(page_uri), target))
    if not inside.startswith("../"):
        return None  # a link inside docs/: MkDocs checks it itself
    docs = Path(config["docs_dir"]).resolve()
    root = Path(config["config_file_path"]).resolve().parent
    path = (docs / inside).resolve()
    if not path.is_file() or root not in path.parents or path.suffix == ".md":
        return None  # a Markdown file outside docs/ would become a page: link the page in docs/ instead
    return path.relative_to(root).as_posix()


def on_files(files, config):
    for page in [f for f in files if f.is_documentation_page()]:
        text = Path(page.abs_src_path).read_text(encoding="utf-8")
        for _, target in LINK.findall(text):
            rel = _repository_file(config, page.src_uri, target)
            if rel and files.get_file_from_path(f"{PREFIX}/{rel}") is None:
                files.append(File.generated(config, f"{PREFIX}/{rel}",
                                            abs_src_path=str(Path(config["config_file_path"]).parent / rel)))
    return files


def on_page_markdown(markdown, page, config, files):
    def point(m: re.Match) -> str:
        rel = _repository_file(config, page.file.src_uri, m.group(2))
        if rel is None:
            return m.group(0)
        here = posixpath.dirname(page.file.src_uri) or "."
        return m.group(1) + posixpath.relpath(f"{PREFIX}/{rel}", here)

    return LINK.sub(point, markdown)

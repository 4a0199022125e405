"""Link this venv's packaged expert models into another venv's site-packages, instead of a second install.

Usage (from the repository root): .venv/bin/python scripts/link_model_packages.py DEST_SITE_PACKAGES

The models (pyproject's ``models`` extra) are data-only packages, about 2 GB. .venv-vllm only needs
them importable to find the GGUF files (experts/models.py), so it gets symbolic links to the main
venv's copies, their ``.dist-info`` included. Idempotent: a link already pointing at the right place
is kept, a stale one replaced. A model package missing from this venv is an error that names it.
"""
from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path


def model_requirements(pyproject: Path) -> list[str]:
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    return [re.split(r"[=<>!~\[ ;]", req, maxsplit=1)[0] for req in extras["models"]]


def top_level_entries(name: str) -> list[Path]:
    """The top-level files and folders a distribution installed into site-packages."""
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        sys.exit(f"model package {name!r} is not installed in {sys.prefix}: run `make setup` first")
    tops = {Path(f).parts[0] for f in dist.files or []}
    return sorted(Path(dist.locate_file(t)).resolve() for t in tops if t not in ("..", "__pycache__"))


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    dest = Path(sys.argv[1])
    if not dest.is_dir():
        sys.exit(f"{dest} is not a folder (the other venv's site-packages)")
    linked = 0
    for name in model_requirements(Path("pyproject.toml")):
        for src in top_level_entries(name):
            link = dest / src.name
            if link.is_symlink() and link.resolve() == src:
                continue
            if link.is_symlink() or link.is_file():
                link.unlink()
            elif link.exists():
                sys.exit(f"{link} is a real folder (an installed copy): pip uninstall it from that venv first")
            link.symlink_to(src)
            linked += 1
    print(f"model packages linked into {dest} ({linked} new links)")


if __name__ == "__main__":
    main()

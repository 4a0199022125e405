"""DVC entry for the `score` stage: a thin call into der_pipeline (the logic lives there)."""
import sys

from der_pipeline.cli import app

if __name__ == "__main__":
    app(["score", *sys.argv[1:]])

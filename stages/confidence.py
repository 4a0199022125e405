"""DVC entry for the `confidence` stage: a thin call into der_pipeline (the logic lives there)."""
import sys

from der_pipeline.cli import app

if __name__ == "__main__":
    app(["confidence", "--no-progress", *sys.argv[1:]])

"""DVC entry for the `curves` stage: a thin call into der_pipeline (the logic lives there)."""
import sys

from der_pipeline.cli import app

if __name__ == "__main__":
    app(["curves", *sys.argv[1:]])

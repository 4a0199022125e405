"""DVC entry for the `budgets` stage: a thin call into der_pipeline (the logic lives there)."""
import sys

from der_pipeline.cli import app
from der_pipeline.params_trace import trace_from_env

if __name__ == "__main__":
    trace_from_env("budgets")  # DER_TRACE_PARAMS: the params keys this stage reads (tests/test_real_pipeline.py)
    app(["budgets", *sys.argv[1:]])

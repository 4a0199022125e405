"""`der-pipeline serve`: the trained router behind an OpenAI-compatible HTTP API."""

"""Admin HTTP API (FastAPI, OpenAPI at /docs), web page and Prometheus metrics."""

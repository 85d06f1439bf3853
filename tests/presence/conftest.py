"""Presence and job-queue contract tests run against a real Redis: the `redis_url` and
`redis_prefix` fixtures of tests/conftest.py (REDIS_URL when set, else a private redis-server)."""

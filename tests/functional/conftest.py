"""Functional tests use the `node` and `peers` fixtures of tests/conftest.py."""

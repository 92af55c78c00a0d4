"""
Shared pytest configuration for the whole suite.

Deliberately minimal: fixtures for broker tests live in
tests/integration/conftest.py, and test modules keep their own helpers.
"""

"""Shared pytest configuration: plugins available to every test directory."""

pytest_plugins = ["support.reports", "support.cluster", "support.s3"]

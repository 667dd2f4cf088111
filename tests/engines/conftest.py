"""Fixtures of the engine tests: a two-node Ray cluster started by `ray start`, a small world and its local run."""

from enginekit import cluster, world  # noqa: F401 - fixtures

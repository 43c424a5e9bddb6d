"""Shared fixtures: the verified MNIST cache and a throwaway result store."""

from __future__ import annotations

import pytest

from prunebench.data import default_data_dir, fetch_mnist
from prunebench.store import ResultStore


@pytest.fixture(scope="session")
def mnist_dir():
    """The real MNIST, fetched and SHA-256 verified once per session (never replaced by random data)."""
    data_dir = default_data_dir()
    fetch_mnist(data_dir)
    return data_dir


@pytest.fixture()
def store(tmp_path):
    s = ResultStore(tmp_path / "runs.sqlite")
    yield s
    s.close()

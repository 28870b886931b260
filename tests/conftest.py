"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread: tiny networks gain nothing from two, and on a shared 2-core machine two threads
    spin against other processes (the model suite ran several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

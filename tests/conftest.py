import pytest
import torch


@pytest.fixture
def float64():
    """Run a test with float64 as the default dtype (numbers are compared to round-off)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: far faster than two on a busy 2-core machine, and kind to it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

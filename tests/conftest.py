import pytest
import torch


@pytest.fixture
def one_thread():
    """Small models run fastest on one thread, and do not slow down when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

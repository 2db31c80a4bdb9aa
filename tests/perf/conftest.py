"""Fixtures shared by the benchmark modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Measure on one torch thread: a module's numbers are then comparable run to run, and
    torch's spinning thread pool measures CPU contention instead of the work itself. A module
    opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

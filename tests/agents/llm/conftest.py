import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    # The machine's cores are shared with other jobs.
    torch.set_num_threads(1)

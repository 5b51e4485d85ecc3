import os

import pytest
import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
torch.set_default_dtype(torch.float64)


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)
    yield

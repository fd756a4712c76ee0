import os
import sys
import warnings

warnings.filterwarnings("ignore", message="No ccache found")
sys.path.insert(0, os.path.dirname(__file__))

import paddle  # noqa: E402
import torch  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    paddle.seed(0)
    yield

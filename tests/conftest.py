"""Shared test set-up: deterministic, and two threads (the CI machine has two cores)."""

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

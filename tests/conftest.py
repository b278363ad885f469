"""Test-wide settings and fixtures. The models in tests are tiny, where torch's intra-op threads cost more
than they save (and oversubscribe a 2-core machine), so the suite runs torch single-threaded. Fixtures: a
tiny base model, and a writer of run folders as the pipeline leaves them (`helpers.write_run_folder`), so
that no test spells a run folder's layout."""

import pytest
import torch
from helpers import TINY_TRUNK, write_run_folder

from internal_rl.models.base_model import BaseModel, BaseModelConfig

torch.set_num_threads(1)


@pytest.fixture
def tiny_base_model() -> BaseModel:
    """A freshly initialised base model on the tiny trunk (seed 0), in eval mode."""
    torch.manual_seed(0)
    return BaseModel(BaseModelConfig(transformer=TINY_TRUNK)).eval()


@pytest.fixture
def make_run_folder():
    """`helpers.write_run_folder`: write a run folder from a base model, a dataset folder and metacontrollers."""
    return write_run_folder

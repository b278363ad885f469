"""Test-wide settings: the models in tests are tiny, where torch's intra-op threads cost more than they
save (and oversubscribe a 2-core machine), so the suite runs torch single-threaded."""

import torch

torch.set_num_threads(1)

"""Test-wide settings: one intra-op thread.

The tests run tiny models whose matmuls are far too small to gain from threads; on a 2-core machine
that is also running other processes (subprocess tests, CI neighbours), torch's thread pool makes them
orders of magnitude slower through oversubscription. Stages set their own count (`runtime.threads`): a
fixture puts the test-wide settings back after each test that ran a stage in-process.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(False)

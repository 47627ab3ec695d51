"""Test-wide settings: one intra-op thread.

The tests run tiny models whose matmuls are far too small to gain from threads; on a 2-core machine
that is also running other processes (subprocess tests, CI neighbours), torch's thread pool makes them
orders of magnitude slower through oversubscription. Results do not depend on the thread count.
"""

import torch

torch.set_num_threads(1)

"""Suite-wide test setup."""

import torch

# The test models are tiny: intra-op threads buy little, and on a shared 2-core machine OpenMP threads
# that outnumber the free cores make LAPACK calls (eigh, svd) up to 50x slower. One thread keeps the
# suite's timing stable.
torch.set_num_threads(1)

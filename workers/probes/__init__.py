"""Loss-landscape and gradient-noise probes at fixed parameters.

Each probe measures one quantity defined in ../shared/reference/SCIENCE.md (documented in
docs/science.md, section "Probes") on a fixed evaluation set:

- `hessian_top_eigenvalue`: PyHessian's power iteration on Hessian-vector products.
- `keskar_sharpness`: Keskar et al. (ICLR 2017) Metric 2.1, by L-BFGS-B or projected gradient ascent.
- `noise_scale_two_batch`: McCandlish et al. (2018) B_simple, unbiased two-batch estimator.
- `noise_scale_exact`: B_simple from per-example gradients (torch.func vmap(grad)).
- `batch_sharpness`: Andreyev & Beneventano (2024), E_B[g_B' H_B g_B / |g_B|^2].
- `adaptive_sharpness`: Kwon et al. (2021) / Andriushchenko et al. (2023), worst and average case.
- `run_probes`: runs the probes a `MeasureConfig` enables and returns warehouse rows.

Common rules, shared by every probe:

- The model is evaluated in eval() mode (BatchNorm running statistics, no dropout) and every
  submodule's train/eval flag is restored afterwards.
- The model's parameters are never written: perturbed losses go through
  `torch.func.functional_call` with substituted tensors, so they are bit-exactly unchanged, and
  no probe touches `.grad`.
- Only trainable parameters (`requires_grad`) span the space: BatchNorm running statistics are
  buffers and frozen parameters stay fixed.
- Random draws (power-iteration start, subspace, batches) come from a CPU `torch.Generator`
  seeded with `seed` and are then moved to the device, so a seed gives the same draws on CPU
  and GPU.
- A non-finite loss never raises: the probe returns a NaN (or inf) value and `run_probes`
  marks the row "diverged".
- `loss_fn(outputs, targets)` must return the mean loss over the batch (as F.cross_entropy
  does): the full-set loss is assembled from chunks as a size-weighted mean of chunk means.

The package: `common` (shared helpers), `hessian`, `sharpness` (one run, and the maximum over
solvers and restarts), `noise`, `curvature` (batch and adaptive sharpness), `settings` (their
configuration), `runner` (`run_probes` and the row format). Pure PyTorch +
SciPy; no Ray.
"""

from workers.probes.common import LossFn, NonFinite, eval_mode, trainable_of
from workers.probes.curvature import adaptive_sharpness, batch_indices, batch_sharpness
from workers.probes.hessian import hessian_top_eigenvalue
from workers.probes.noise import noise_scale_exact, noise_scale_two_batch
from workers.probes.runner import PROBES, ROW_KEYS, json_value, probe_row, probe_subset, run_probes
from workers.probes.sharpness import keskar_sharpness, keskar_sharpness_max

__all__ = [
    "PROBES",
    "ROW_KEYS",
    "LossFn",
    "NonFinite",
    "adaptive_sharpness",
    "batch_indices",
    "batch_sharpness",
    "eval_mode",
    "hessian_top_eigenvalue",
    "json_value",
    "keskar_sharpness",
    "keskar_sharpness_max",
    "noise_scale_exact",
    "noise_scale_two_batch",
    "probe_row",
    "probe_subset",
    "run_probes",
    "trainable_of",
]

"""How much memory a pack member costs on a CUDA device, measured (torch); the scheduler
sizes packs with it (scheduler/pack_tasks.py)."""

from __future__ import annotations

import copy

import torch
from torch.func import stack_module_state

from workers.config import TrialConfig
from workers.data import Dataset
from workers.evaluation import EVAL_BATCH
from workers.models import build_model
from workers.pack_stack import EVAL_MIN_EXAMPLES, PackStack
from workers.packnet import make_pack_net


def measure_member_bytes(
    cfg: TrialConfig, data: Dataset, device: str | torch.device = "cuda"
) -> tuple[int, int]:
    """(bytes per member, fixed bytes) of a pack of `cfg`'s shape, measured on `device`:
    one training step and one evaluation chunk of packs of 1 and 2 members, peak allocated
    memory of each (CUDA only; data already on the device is not counted)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"measure_member_bytes: device {dev} is not a CUDA device")
    peaks = []
    for p in (1, 2):
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        model = build_model(cfg.model, data.input_shape, data.num_classes).to(dev)
        net = make_pack_net(model)
        params, buffers = stack_module_state([copy.deepcopy(model) for _ in range(p)])
        flat = torch.cat([params[k].detach().reshape(p, -1) for k in net.param_names], 1).to(dev)
        stack = PackStack(net, [cfg] * p, flat, [buffers[k].to(dev) for k in net.buffer_names])
        b = min(cfg.batch_size, data.n_train)
        idx = torch.arange(b, device=dev).unsqueeze(0).expand(p, b)
        neg_lr = torch.full((p, 1), -1e-9, device=dev)
        bc2 = 1.0 if stack.adam else None
        for _ in range(2):  # the second step holds the optimizer state too
            stack.step(net.gather(data.x_train, idx), data.y_train[idx], neg_lr, bc2, True)
        chunk = max(EVAL_MIN_EXAMPLES, EVAL_BATCH // p)
        stack.evaluate(data.x_val[:chunk], data.y_val[:chunk])
        torch.cuda.synchronize(dev)
        peaks.append(torch.cuda.max_memory_allocated(dev) - base)
        del stack, flat, params, buffers, model, net
    per = max(1, peaks[1] - peaks[0])
    return per, max(0, peaks[0] - per)

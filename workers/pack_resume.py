"""Resume states of pack members, in the lone trial's format (torch): a member's checkpoint
resumes in a pack or alone, and a lone trial's in a pack (workers/train.py writes the same
keys)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workers.pack_loop import PackMember
from workers.pack_stack import PackStack
from workers.resume_rows import compact_rows, expand_rows
from workers.trial.state import TrialState


def member_resume_state(
    stack: PackStack, row: int, m: PackMember, template: nn.Module, dev: torch.device
) -> dict[str, Any]:
    """Member `row`'s resume state in run_trial's format (either path can resume it)."""
    state = {
        "model": stack.member_state_dict(row, template),
        "optimizer": stack.member_optimizer_state(row, m.opt_template, m.st.step),
        "init": [
            t.reshape(s).cpu().clone()
            for t, s in zip(
                torch.split(stack.init[row], stack.sizes), stack.net.param_shapes, strict=True
            )
        ],
        "rng_cpu": torch.get_rng_state(),
        "state": compact_rows(m.st.as_saved()),  # row lists as columns (workers/resume_rows.py)
    }
    if dev.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(dev)
    return state


def load_resume(
    stack: PackStack, members: list[PackMember], saved: list[dict | None], dev: torch.device
) -> None:
    """Load every member's resume state (run_trial's format) into the stack."""
    names = stack.net.param_names
    with torch.no_grad():
        for r, (m, s) in enumerate(zip(members, saved, strict=True)):
            if s is None:
                raise ValueError(f"run_pack: member {m.cfg.trial_id} has no resume state")
            stack.flat[r] = torch.cat([s["model"][k].reshape(-1) for k in names]).to(dev)
            stack.init[r] = torch.cat([t.reshape(-1) for t in s["init"]]).to(dev)
            for b, k in zip(stack.buffers, stack.net.buffer_names, strict=True):
                b[r] = s["model"][k].to(dev)
            opt_state = s["optimizer"]["state"]
            for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
                if key in opt_state.get(0, {}):
                    buf = stack.state.setdefault(key, torch.zeros_like(stack.flat))
                    buf[r] = torch.cat(
                        [opt_state[i][key].reshape(-1) for i in range(len(names))]
                    ).to(dev)
            m.st = TrialState.from_saved(expand_rows(s["state"]))
            m.st.resumed_from_epoch = m.st.epoch
        stack.prev = stack.flat.clone()
    torch.set_rng_state(saved[0]["rng_cpu"])
    if dev.type == "cuda" and "rng_cuda" in saved[0]:
        torch.cuda.set_rng_state(saved[0]["rng_cuda"], dev)

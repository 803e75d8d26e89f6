"""The stacked training state of a pack (torch): every member's parameters as one row of a
(P, N) matrix, one batched step for all members, and evaluation per member.

The update is written here, op for op as torch.optim's single-tensor SGD / Adam, because
torch.optim takes one lr per parameter group while a pack holds one tensor per parameter for
all members: per-member lr (scaling rule, warmup and plateau decay), momentum, nesterov,
weight decay, Adam betas/eps and clipping are (P, 1) tensors, or plain Python numbers when
the whole pack shares a value (the cheap and bit-faithful case). See workers/pack.py.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.config import TrialConfig
from workers.evaluation import EVAL_BATCH
from workers.losses import Loss, loss_of
from workers.packnet import PackNet, VmapNet

# Evaluation runs EVAL_BATCH example-forwards per call, split across the members (P models on
# 4096 examples each would not fit): its memory does not grow with P, so the measured
# per-member bytes (measure_member_bytes) are training bytes.
EVAL_MIN_EXAMPLES = 16  # per member and call


def uniform_or_tensor(values: Sequence[float], dev: torch.device) -> float | Tensor:
    """A Python number when every member shares it (the op is then exactly torch.optim's),
    else a (P, 1) float32 tensor that broadcasts over each member's row."""
    if all(v == values[0] for v in values):
        return float(values[0])
    return torch.tensor(values, dtype=torch.float32, device=dev).unsqueeze(1)


class PackStack:
    """The training state of the active members, row i = member i.

    flat (P, N): every trainable parameter, flattened and concatenated in `named_parameters`
    order; `views` are leaf tensors (requiring grad) viewing it in each parameter's shape,
    which is what PackNet multiplies with. Optimizer states, init and the previous epoch's
    parameters are (P, N) as well, so an update is a handful of kernels whatever the number
    of layers. BatchNorm buffers stay separate stacked tensors (PackNet updates them).
    """

    def __init__(
        self, net: PackNet | VmapNet, cfgs: list[TrialConfig], flat: Tensor, buffers: list[Tensor]
    ):
        self.net, self.cfgs = net, cfgs
        self.lossf: Loss = loss_of(cfgs[0])  # shared: the loss is part of the shape key
        self.sizes = [math.prod(s) for s in net.param_shapes]
        self.flat = flat
        self.buffers = buffers
        self.grad = torch.zeros_like(flat)
        self.init = flat.clone()
        self.prev = flat.clone()
        self.state: dict[str, Tensor] = {}
        self._views()
        self._hyper()

    def _views(self) -> None:
        P = self.flat.shape[0]
        self.views, self.grad_views, off = [], [], 0
        for size, shape in zip(self.sizes, self.net.param_shapes, strict=True):
            v = self.flat[:, off : off + size].view(P, *shape)
            self.views.append(v.requires_grad_(True))
            self.grad_views.append(self.grad[:, off : off + size].view(P, *shape))
            off += size
        # The step's (P, N) scratch: a fresh tensor of this size each step costs a page-faulting
        # allocation (glibc mmaps every block this large) per step on CPU.
        self.scratch = torch.empty_like(self.flat)

    def _hyper(self) -> None:
        dev, opts = self.flat.device, [c.optimizer for c in self.cfgs]
        self.adam = opts[0].name == "adam"
        self.wd = uniform_or_tensor([o.weight_decay for o in opts], dev)
        self.momentum = uniform_or_tensor([o.momentum for o in opts], dev)
        self.any_momentum = any(o.momentum != 0 for o in opts)
        nest = [o.nesterov for o in opts]
        self.nesterov: bool | Tensor = (
            nest[0]
            if all(n == nest[0] for n in nest)
            else torch.tensor(nest, device=dev).unsqueeze(1)
        )
        self.beta1 = [o.betas[0] for o in opts]
        self.beta2 = [o.betas[1] for o in opts]
        self.one_minus_beta1 = uniform_or_tensor([1 - b for b in self.beta1], dev)
        self.beta2_t = uniform_or_tensor(self.beta2, dev)
        self.one_minus_beta2 = uniform_or_tensor([1 - b for b in self.beta2], dev)
        self.eps = uniform_or_tensor([o.eps for o in opts], dev)
        clip = [c.grad_clip_norm for c in self.cfgs]
        self.clip = None
        if any(c is not None for c in clip):
            self.clip = (
                torch.tensor([c or 0.0 for c in clip], device=dev).unsqueeze(1),
                torch.tensor([c is not None for c in clip], device=dev).unsqueeze(1),
            )

    @property
    def size(self) -> int:
        return self.flat.shape[0]

    def keep(self, rows: list[int]) -> None:
        """Drop every member not in `rows` (finished ones stop costing compute)."""
        idx = torch.tensor(rows, device=self.flat.device)
        self.cfgs = [self.cfgs[i] for i in rows]
        self.flat = self.flat.detach().index_select(0, idx)
        self.grad = self.grad.index_select(0, idx)
        self.init = self.init.index_select(0, idx)
        self.prev = self.prev.index_select(0, idx)
        self.buffers = [b.index_select(0, idx) for b in self.buffers]
        self.state = {k: v.index_select(0, idx) for k, v in self.state.items()}
        self._views()
        self._hyper()

    # ------------------------------------------------------------------ one step
    def step(
        self, x: Tensor, y: Tensor, neg_lr: Tensor, bc2: float | Tensor | None, upd_norms: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Forward, backward and update of every member on its batch; returns per-member
        (mean batch loss, gradient norm before clipping, ||theta_new - theta_old|| or None).

        neg_lr (P, 1): -lr for SGD, -lr / (1 - beta1^t) for Adam (torch.optim's step_size);
        bc2: Adam's sqrt(1 - beta2^t) (a number, or (P, 1) when members' beta2 differ).
        """
        P = self.size
        logits = self.net.forward(self.views, self.buffers, x, training=True)
        if self.lossf.is_default:
            k = logits.shape[-1]
            loss = F.cross_entropy(logits.reshape(-1, k), y.reshape(-1), reduction="none")
            loss = loss.view(P, -1).mean(1)
        else:  # any other loss, member by member (each call is that member's batch mean)
            loss = torch.stack([self.lossf(logits[p], y[p]) for p in range(P)])
        # d(sum of member losses)/d(member p's params) = d(loss_p)/d(params_p): members are
        # separable, so one backward gives every member its own gradient.
        grads = torch.autograd.grad(loss.sum(), self.views)
        with torch.no_grad():
            for gv, gr in zip(self.grad_views, grads, strict=True):
                gv.copy_(gr)  # contiguous copies (PackNet's weight gradients are)
            del grads
            g = self.grad
            gnorm = torch.linalg.vector_norm(g, dim=1)
            if self.clip is not None:
                # torch.nn.utils.clip_grad_norm_: coef = max / (norm + 1e-6), clamped to 1;
                # members without clipping multiply by exactly 1.
                max_norm, has = self.clip
                coef = (max_norm / (gnorm.unsqueeze(1) + 1e-6)).clamp(max=1.0)
                g.mul_(torch.where(has, coef, torch.ones_like(coef)))
            d = self._direction(g, bc2)
            if upd_norms:
                # ||theta_new - theta_old|| as run_trial measures it (the difference of the
                # rounded parameters), with no (P, N) allocation: scratch = new, flat =
                # old - new in place (the same norm), then flat = new.
                s = self.scratch
                if self.adam:
                    torch.mul(d[0], neg_lr, out=s)
                    torch.addcdiv(self.flat, s, d[1], out=s)
                else:
                    torch.addcmul(self.flat, neg_lr, d, out=s)
                upd = torch.linalg.vector_norm(self.flat.sub_(s), dim=1)
                self.flat.copy_(s)
            else:
                if self.adam:
                    self.flat.addcdiv_(neg_lr * d[0], d[1])
                else:
                    self.flat.addcmul_(neg_lr, d)
                upd = None
        return loss.detach(), gnorm, upd

    def _direction(self, g: Tensor, bc2: float | Tensor | None):
        """The update direction, op for op as torch.optim's single-tensor SGD / Adam."""
        p = self.flat
        if isinstance(self.wd, Tensor):
            g = torch.addcmul(g, self.wd, p)
        elif self.wd != 0:
            g = g.add(p, alpha=self.wd)
        if self.adam:
            if "exp_avg" not in self.state:
                self.state["exp_avg"] = torch.zeros_like(p)
                self.state["exp_avg_sq"] = torch.zeros_like(p)
            m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
            m.lerp_(g, self.one_minus_beta1)
            if isinstance(self.one_minus_beta2, Tensor):
                v.mul_(self.beta2_t).addcmul_(g, g * self.one_minus_beta2)
            else:
                v.mul_(self.beta2_t).addcmul_(g, g, value=self.one_minus_beta2)
            denom = (v.sqrt() / bc2).add_(self.eps)
            return m, denom
        if not self.any_momentum:
            return g
        if "momentum_buffer" not in self.state:
            # torch.optim starts the buffer as a copy of the first direction; 0 * m + d is d.
            self.state["momentum_buffer"] = torch.zeros_like(p)
        buf = self.state["momentum_buffer"]
        buf.mul_(self.momentum).add_(g)
        if self.nesterov is False:
            return buf
        if isinstance(self.momentum, Tensor):
            nest = torch.addcmul(g, self.momentum, buf)
        else:
            nest = g.add(buf, alpha=self.momentum)
        return nest if self.nesterov is True else torch.where(self.nesterov, nest, buf)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean loss and accuracy of every member over a whole split, eval mode: (P,) device
        tensors. Forwards run on max(EVAL_MIN_EXAMPLES, EVAL_BATCH // P) examples per member
        (memory that does not grow with P), but the sums run over blocks of EVAL_BATCH
        examples whatever P is: a member's numbers do not depend on its pack (issue 24)."""
        P, n = self.size, x.shape[0]
        sub = max(EVAL_MIN_EXAMPLES, EVAL_BATCH // P)
        loss_sum = torch.zeros(P, device=x.device, dtype=torch.float64)
        correct = torch.zeros(P, device=x.device, dtype=torch.float64)
        for b in range(0, n, EVAL_BATCH):
            xb, yb = x[b : b + EVAL_BATCH], y[b : b + EVAL_BATCH]
            parts = []
            for i in range(0, xb.shape[0], sub):
                xs = self.net.broadcast(xb[i : i + sub], P)
                logits = self.net.forward(self.views, self.buffers, xs, False).float()
                if self.lossf.is_default:
                    yy = yb[i : i + sub].unsqueeze(0).expand(P, -1)
                    ce = F.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), yy.reshape(-1), reduction="none"
                    )
                    parts.append(ce.view(P, -1))
                    correct += (logits.argmax(-1) == yy).sum(1)
                else:
                    parts.append(logits)
            block = torch.cat(parts, dim=1)
            if self.lossf.is_default:
                loss_sum += block.double().sum(1)
                continue
            for p in range(P):  # the loss is a batch mean: one call per member and block
                loss_sum[p] += self.lossf(block[p], yb).double() * xb.shape[0]
                c = self.lossf.correct(block[p], yb)
                correct[p] += c if c is not None else math.nan
        return (loss_sum / n).float(), (correct / n).float()

    # ------------------------------------------------------------------ per-member views
    def layer_norms(self, a: Tensor, b: Tensor | None = None) -> Tensor:
        """(T, P): per-parameter-tensor norms of a - b (or of a), member by member."""
        out, off = [], 0
        for size in self.sizes:
            seg = (
                a[:, off : off + size]
                if b is None
                else a[:, off : off + size] - b[:, off : off + size]
            )
            out.append(torch.linalg.vector_norm(seg, dim=1))
            off += size
        return torch.stack(out)

    def member_state_dict(self, row: int, template: nn.Module) -> dict[str, Tensor]:
        """Member `row`'s weights as the state_dict of a lone model (CPU tensors)."""
        p = {n: v[row] for n, v in zip(self.net.param_names, self.views, strict=True)}
        b = {n: v[row] for n, v in zip(self.net.buffer_names, self.buffers, strict=True)}
        return {k: (p[k] if k in p else b[k]).detach().cpu().clone() for k in template.state_dict()}

    def member_model(self, row: int, template: nn.Module) -> nn.Module:
        """A lone nn.Module holding member `row`'s current weights (for the probes)."""
        model = copy.deepcopy(template)
        with torch.no_grad():
            for (_, p), v in zip(model.named_parameters(), self.views, strict=True):
                p.copy_(v[row])
            for (_, b), v in zip(model.named_buffers(), self.buffers, strict=True):
                b.copy_(v[row])
        return model.train()

    def member_optimizer_state(self, row: int, template: dict[str, Any], step: int) -> dict:
        """Member `row`'s optimizer state in torch.optim's state_dict format (a lone trial
        can load it, and so can a pack)."""
        state: dict[int, dict[str, Tensor]] = {}
        pieces = {k: torch.split(v[row].detach().cpu(), self.sizes) for k, v in self.state.items()}
        for i, shape in enumerate(self.net.param_shapes):
            if self.adam and pieces:
                state[i] = {
                    "step": torch.tensor(float(step)),
                    "exp_avg": pieces["exp_avg"][i].reshape(shape).clone(),
                    "exp_avg_sq": pieces["exp_avg_sq"][i].reshape(shape).clone(),
                }
            elif "momentum_buffer" in pieces and self.cfgs[row].optimizer.momentum != 0:
                state[i] = {"momentum_buffer": pieces["momentum_buffer"][i].reshape(shape).clone()}
        return {"state": state, "param_groups": copy.deepcopy(template["param_groups"])}

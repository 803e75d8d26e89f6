"""The forward pass of P models of one architecture at once: the engine of trial packs.

`PackNet(model)` reads a model built by `workers.models.build_model` and replays its forward
pass on *stacked* tensors: every parameter and buffer gets a leading member dimension P, and
one call computes the logits of all P members, each on its own batch.

Why not `torch.func.vmap(functional_call(...))`: it computes the same thing with the same
kernels (vmap turns a batched conv into a grouped conv and a batched linear into a bmm, as
here), but every op goes through functorch's batching layer. Measured on this repo's CPU box
(MLP 4-8-8-10, P=4, B=4, one thread, forward + backward): vmap(grad) 7.2 ms, autograd over a
vmapped forward 4.6 ms, this executor 1.4 ms, one lone model 1.3 ms. Small-batch packs are
bound by exactly this per-op overhead on a GPU (launch-bound), so the executor is the fast
path. It also makes BatchNorm and dropout simple (below), where vmap needs workarounds.

Two activation layouts, chosen per layer so that no op ever mixes members:
- "pb": (P, B, features...) for Linear (one `baddbmm`: member p multiplies its own weight);
- "bc": (B, P*C, spatial...) for Conv/BatchNorm/MaxPool: members are channel groups, so a
  conv is one grouped conv (groups = P * groups), and BatchNorm's per-channel statistics are
  per-member per-channel statistics. BatchNorm running stats are plain stacked buffers of
  shape (P, C) updated in place through a flat (P*C) view: exactly what P lone BatchNorm
  layers would do, with no special casing.
Dropout draws one mask over the whole stacked tensor: independent per member (vmap's
randomness="different"), though of course not the masks a lone trial would draw.

Supported modules: Sequential, the conv-net wrapper of `workers.models`, Linear, Conv1d/2d,
BatchNorm1d/2d (momentum set, running stats tracked), ReLU, MaxPool1d/2d, Dropout, Flatten,
Identity. Anything else raises `PackUnsupported` (the scheduler then runs the trial alone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers import models

# An op maps the activation h of P members (params and buffers stacked) to the next one.
Op = Callable[[Tensor, int, Sequence[Tensor], Sequence[Tensor], bool], Tensor]


class PackUnsupported(ValueError):
    """The model holds a module (or a setting) that PackNet cannot batch."""


def _bc_from_pb(channels: int, spatial: tuple[int, ...]) -> Op:
    def op(h, P, ps, bs, training):
        b = h.shape[1]
        return (
            h.reshape(P, b, channels, *spatial).transpose(0, 1).reshape(b, P * channels, *spatial)
        )

    return op


def _pb_from_bc(h: Tensor, P: int) -> Tensor:
    # (B, P*C, *S) -> (P, B, C*prod(S)): member p's features in the order flatten(1) gives.
    return h.reshape(h.shape[0], P, -1).transpose(0, 1)


class PackNet:
    """Replays `model`'s forward pass for P stacked members (see the module docstring).

    `param_names` / `param_shapes` list the trainable parameters in `named_parameters()`
    order (the order of the stacked tensors `forward` takes); `buffer_names` likewise for
    `named_buffers()`.
    """

    def __init__(self, model: nn.Module):
        named = list(model.named_parameters())
        frozen = [n for n, p in named if not p.requires_grad]
        if frozen:
            raise PackUnsupported(f"frozen parameters {frozen}: packs train every parameter")
        self.param_names = [n for n, _ in named]
        self.param_shapes = [tuple(p.shape) for _, p in named]
        self.buffer_names = [n for n, _ in model.named_buffers()]
        self._p = {n: i for i, n in enumerate(self.param_names)}
        self._b = {n: i for i, n in enumerate(self.buffer_names)}
        self.ops: list[Op] = []
        # (channels, spatial) when the first op wants the conv layout: `gather` then builds
        # it directly (no transpose copy of the batch).
        self.entry: tuple[int, tuple[int, ...]] | None = None
        # performance.channels_last (workers/perf.py): 2-D convolutions in NHWC; set after
        # construction, read at every call.
        self.has_conv2d, self.channels_last = False, False
        self.out_layout = self._compile(model, "", "pb")

    # ------------------------------------------------------------------ compile
    def _compile(self, mod: nn.Module, prefix: str, layout: str) -> str:
        name = prefix.rstrip(".") or type(mod).__name__
        if isinstance(mod, models._ConvNet):
            if layout == "pb":
                if not self.ops and self.entry is None:
                    self.entry = (mod.channels, tuple(mod.spatial))
                else:
                    self.ops.append(_bc_from_pb(mod.channels, tuple(mod.spatial)))
            self._compile(mod.features, prefix + "features.", "bc")
            self.ops.append(lambda h, P, ps, bs, training: _pb_from_bc(h, P))
            return self._compile(mod.head, prefix + "head.", "pb")
        if isinstance(mod, nn.Sequential):
            for child_name, child in mod.named_children():
                layout = self._compile(child, f"{prefix}{child_name}.", layout)
            return layout
        if isinstance(mod, nn.Flatten):
            if (mod.start_dim, mod.end_dim) != (1, -1):
                raise PackUnsupported(f"{name}: Flatten({mod.start_dim}, {mod.end_dim})")
            if layout == "bc":
                self.ops.append(lambda h, P, ps, bs, training: _pb_from_bc(h, P))
            else:
                self.ops.append(lambda h, P, ps, bs, training: h.reshape(P, h.shape[1], -1))
            return "pb"
        if isinstance(mod, nn.Linear):
            if layout != "pb":
                raise PackUnsupported(f"{name}: Linear on a conv activation")
            iw = self._p[prefix + "weight"]
            ib = self._p.get(prefix + "bias")
            # out^T = W @ h^T (a transposed view back to (P, B, out)): the weight gradient,
            # g^T @ h, then comes out of autograd contiguous in W's (P, out, in) layout,
            # where h @ W^T would give a transposed one whose strided copy into the flat
            # gradient cost more than the matmul itself (docs/packs.md, the CPU profile).
            if ib is None:
                self.ops.append(
                    lambda h, P, ps, bs, training: torch.bmm(ps[iw], h.transpose(1, 2)).transpose(
                        1, 2
                    )
                )
            else:
                self.ops.append(
                    lambda h, P, ps, bs, training: torch.baddbmm(
                        ps[ib].unsqueeze(2), ps[iw], h.transpose(1, 2)
                    ).transpose(1, 2)
                )
            return "pb"
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            if layout != "bc":
                raise PackUnsupported(f"{name}: convolution on a flat activation")
            if mod.padding_mode != "zeros":
                raise PackUnsupported(f"{name}: padding_mode={mod.padding_mode!r}")
            conv = F.conv1d if isinstance(mod, nn.Conv1d) else F.conv2d
            iw = self._p[prefix + "weight"]
            ib = self._p.get(prefix + "bias")
            stride, padding, dilation, groups = mod.stride, mod.padding, mod.dilation, mod.groups
            self.has_conv2d = self.has_conv2d or conv is F.conv2d

            def conv_op(h, P, ps, bs, training):
                w = ps[iw]
                # (P, Cout, Cin/g, *k) -> (P*Cout, Cin/g, *k): member p owns groups p*g...
                w = w.reshape(P * w.shape[1], *w.shape[2:])
                if self.channels_last and h.dim() == 4:
                    # NHWC input and weights (the weights' copy is the only extra work; the
                    # gradient flows back through it into the stacked parameters).
                    h = h.contiguous(memory_format=torch.channels_last)
                    w = w.contiguous(memory_format=torch.channels_last)
                b = None if ib is None else ps[ib].reshape(-1)
                return conv(h, w, b, stride, padding, dilation, P * groups)

            self.ops.append(conv_op)
            return "bc"
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if mod.momentum is None or not mod.track_running_stats:
                raise PackUnsupported(f"{name}: BatchNorm needs momentum set and running stats")
            if isinstance(mod, nn.BatchNorm2d) and layout != "bc":
                raise PackUnsupported(f"{name}: BatchNorm2d on a flat activation")
            irm, irv = self._b[prefix + "running_mean"], self._b[prefix + "running_var"]
            inb = self._b[prefix + "num_batches_tracked"]
            iw = self._p.get(prefix + "weight")
            ib = self._p.get(prefix + "bias")
            momentum, eps = mod.momentum, mod.eps

            def bn(h, P, ps, bs, training):
                if training:
                    bs[inb].add_(1)  # as nn.BatchNorm does; unused with momentum set
                w = None if iw is None else ps[iw].reshape(-1)
                b = None if ib is None else ps[ib].reshape(-1)
                return F.batch_norm(
                    h, bs[irm].view(-1), bs[irv].view(-1), w, b, training, momentum, eps
                )

            if layout == "bc":
                self.ops.append(bn)
            else:

                def bn_pb(h, P, ps, bs, training):
                    # (P, B, F) -> (B, P*F): per-member per-feature statistics over B.
                    b_, f = h.shape[1], h.shape[2]
                    out = bn(h.transpose(0, 1).reshape(b_, P * f), P, ps, bs, training)
                    return out.reshape(b_, P, f).transpose(0, 1)

                self.ops.append(bn_pb)
            return layout
        if isinstance(mod, nn.ReLU):
            self.ops.append(lambda h, P, ps, bs, training: F.relu(h))
            return layout
        if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
            if layout != "bc" or mod.return_indices:
                raise PackUnsupported(f"{name}: max pooling on a flat activation / with indices")
            pool = F.max_pool1d if isinstance(mod, nn.MaxPool1d) else F.max_pool2d
            k, s, p, d, c = mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode
            self.ops.append(lambda h, P, ps, bs, training: pool(h, k, s, p, d, ceil_mode=c))
            return layout
        if isinstance(mod, nn.Dropout):
            rate = mod.p
            if rate > 0:
                self.ops.append(lambda h, P, ps, bs, training: F.dropout(h, rate, training))
            return layout
        if isinstance(mod, nn.Identity):
            return layout
        raise PackUnsupported(
            f"{name}: {type(mod).__name__} is not supported in a pack (supported: Sequential, "
            "Linear, Conv1d/2d, BatchNorm1d/2d, ReLU, MaxPool1d/2d, Dropout, Flatten, Identity)"
        )

    # ------------------------------------------------------------------ run
    def gather(self, x: Tensor, idx: Tensor) -> Tensor:
        """Member p's batch is x[idx[p]]: one gather, straight into the first layer's layout.
        idx: (P, B) int64 -> (P, B, *input_shape) or (B, P*C, *spatial)."""
        if self.entry is None:
            return x[idx]
        c, spatial = self.entry
        p, b = idx.shape
        return x[idx.t()].reshape(b, p * c, *spatial)

    def broadcast(self, x: Tensor, P: int) -> Tensor:
        """The same examples x (E, *input_shape) for every member (evaluation)."""
        if self.entry is None:
            return x.unsqueeze(0).expand(P, *x.shape)
        c, spatial = self.entry
        e = x.shape[0]
        return x.unsqueeze(1).expand(e, P, *x.shape[1:]).reshape(e, P * c, *spatial)

    def forward(
        self, params: Sequence[Tensor], buffers: Sequence[Tensor], h: Tensor, training: bool
    ) -> Tensor:
        """Logits (P, B, classes) of the members for the input built by `gather`/`broadcast`.
        Training mode updates the stacked BatchNorm buffers in place and draws dropout."""
        P = params[0].shape[0]
        for op in self.ops:
            h = op(h, P, params, buffers, training)
        return _pb_from_bc(h, P) if self.out_layout == "bc" else h


class VmapNet:
    """PackNet's interface for any model without buffers: the forward pass of P members is
    `torch.func.vmap(functional_call(model, member params, x))` over the member dimension.

    The general path for user models (docs/custom.md): correct for every member-separable
    forward (no buffers updated in place: BatchNorm running statistics make a model
    unsupported here; dropout draws independent masks per member, randomness="different").
    Slower per op than PackNet's batched kernels, faster than training members one by one
    where the per-step overhead dominates. `make_pack_net` checks, on real inputs, that a
    member's vmapped outputs equal the lone model's before a pack uses it.
    """

    entry = None

    def __init__(self, model: nn.Module):
        named = list(model.named_parameters())
        frozen = [n for n, p in named if not p.requires_grad]
        if frozen:
            raise PackUnsupported(f"frozen parameters {frozen}: packs train every parameter")
        bufs = [n for n, _ in model.named_buffers()]
        if bufs:
            raise PackUnsupported(
                f"{type(model).__name__} holds buffers {bufs[:4]} (e.g. BatchNorm running "
                "statistics) that torch.func.vmap cannot update per member"
            )
        self.model = model
        self.param_names = [n for n, _ in named]
        self.param_shapes = [tuple(p.shape) for _, p in named]
        self.buffer_names: list[str] = []

    def gather(self, x: Tensor, idx: Tensor) -> Tensor:
        return x[idx]

    def broadcast(self, x: Tensor, P: int) -> Tensor:
        return x.unsqueeze(0).expand(P, *x.shape)

    def forward(
        self, params: Sequence[Tensor], buffers: Sequence[Tensor], h: Tensor, training: bool
    ) -> Tensor:
        from torch.func import functional_call, vmap

        self.model.train(training)
        names = self.param_names

        def one(ps: tuple[Tensor, ...], xb: Tensor) -> Tensor:
            return functional_call(self.model, dict(zip(names, ps, strict=True)), (xb,))

        return vmap(one, randomness="different")(tuple(params), h)


def make_pack_net(model: nn.Module, sample: Tensor | None = None) -> PackNet | VmapNet:
    """The pack executor for `model`: PackNet when every module is one it batches natively,
    else VmapNet when the model qualifies and (given `sample` inputs) a pack of two copies
    reproduces the lone model's eval outputs; else PackUnsupported with both reasons."""
    try:
        return PackNet(model)
    except PackUnsupported as native:
        try:
            net = VmapNet(model)
        except PackUnsupported as general:
            raise PackUnsupported(f"{native}; and not through torch.func: {general}") from None
        if sample is not None:
            _check_vmap(net, model, sample)
        return net


def _check_vmap(net: VmapNet, model: nn.Module, sample: Tensor) -> None:
    was = model.training
    try:
        with torch.no_grad():
            model.eval()
            want = model(sample)
            params = [p.detach().unsqueeze(0).expand(2, *p.shape) for p in model.parameters()]
            got = net.forward(params, [], net.broadcast(sample, 2), training=False)
    except Exception as exc:
        raise PackUnsupported(
            f"{type(model).__name__} does not run under torch.func.vmap ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    finally:
        model.train(was)
    if got.shape[1:] != want.shape or not torch.allclose(got[1], want, rtol=1e-4, atol=1e-5):
        raise PackUnsupported(
            f"{type(model).__name__}: vmapped outputs differ from the lone model's; trained alone"
        )

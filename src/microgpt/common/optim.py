"""Optimizers: AdamW with decay/no-decay groups, and Muon for the hidden weight matrices.

Which parameters decay follows nanoGPT: every tensor with two or more dimensions (matrices and embeddings)
decays, biases and norm gains (1-D) do not. With ``optimizer="muon"`` the 2-D weights inside the transformer
blocks go to :class:`Muon`; embeddings, the output head and 1-D tensors stay on AdamW, as in Keller Jordan's
Muon recipe (embeddings and heads are not "hidden" linear maps, and orthogonalising them hurts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

from microgpt.common.parallel import clip_grad_norm

OptimizerName = Literal["adamw", "muon"]

# Coefficients of the quintic Newton-Schulz iteration, tuned by Keller Jordan to push singular values toward 1
# fast from any start in (0, 1]; they do not converge exactly to 1 (they land in ~[0.7, 1.2]), which the Muon
# write-up reports does not hurt. Source: https://kellerjordan.github.io/posts/muon/
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(grad: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate the nearest semi-orthogonal matrix ``U V^T`` of ``grad = U S V^T`` by Newton-Schulz.

    Takes one matrix ``(rows, cols)`` or a stack of same-shape matrices ``(n, rows, cols)``, each orthogonalised on
    its own: a stack runs as batched matmuls, one kernel per product instead of one per matrix. Runs in bfloat16
    on GPUs with bf16 tensor cores (the iteration is robust to it and it halves the cost) and in float32 elsewhere
    (bf16 matmuls are ~20x slower on CPUs without AMX, and emulated on pre-Ampere GPUs).

    Args:
        grad: A matrix, or a stack of matrices (the last two dimensions are rows and columns).
        steps: Newton-Schulz iterations; 5 is the published default.

    Returns:
        A tensor of the same shape and dtype as ``grad``.
    """
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor, distribute_tensor

        if isinstance(grad, DTensor):
            # An FSDP shard: Newton-Schulz needs the whole matrix. Every rank gathers it, orthogonalises it (the
            # work each DDP rank already does) and keeps its own shard — exact, one all-gather per matrix (as many
            # bytes as FSDP's own forward gather). nanochat's DistMuon instead gives each matrix to one rank and
            # all-gathers the results, dividing the work; that is the next step if Muon's share of a step matters.
            full = orthogonalize(grad.full_tensor(), steps)
            return distribute_tensor(full, grad.device_mesh, grad.placements, src_data_rank=None)
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor, distribute_tensor

        if isinstance(grad, DTensor):
            # An FSDP shard: Newton-Schulz needs the whole matrix. Every rank gathers it, orthogonalises it (the
            # work each DDP rank already does) and keeps its own shard — exact, one all-gather per matrix (as many
            # bytes as FSDP's own forward gather). nanochat's DistMuon instead gives each matrix to one rank and
            # all-gathers the results, dividing the work; that is the next step if Muon's share of a step matters.
            full = orthogonalize(grad.full_tensor(), steps)
            return distribute_tensor(full, grad.device_mesh, grad.placements, src_data_rank=None)
    assert grad.ndim in (2, 3), "orthogonalize works on matrices or a stack of them"
    a, b, c = _NS_COEFFS
    native_bf16 = grad.is_cuda and torch.cuda.get_device_capability(grad.device) >= (8, 0)
    x = grad.to(torch.bfloat16 if native_bf16 else torch.float32)
    transposed = x.size(-2) > x.size(-1)
    if transposed:  # iterate on the wide orientation so X @ X^T is the small (rows, rows) Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral <= Frobenius <= 1: inside the basin
    for _ in range(steps):
        gram = x @ x.mT  # (..., rows, rows)
        poly = b * gram + c * (gram @ gram)
        x = a * x + poly @ x
    if transposed:
        x = x.mT
    result: torch.Tensor = x.to(grad.dtype)
    return result


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz (Jordan et al. 2024), for 2-D hidden weights only.

    Each step: momentum buffer ``m = mu*m + (1-mu)*g``; Nesterov look-ahead ``u = (1-mu)*g + mu*m``;
    ``u = orthogonalize(u)`` scaled by ``sqrt(max(1, rows/cols))``; decoupled weight decay; ``p -= lr*u``.

    The Newton-Schulz work is batched: the updates of same-shape matrices (a transformer's layers share a few
    shapes) are stacked and orthogonalised together. Every rank still does all of it — DDP has already given each
    rank the whole gradient; sharding the matrices over ranks and all-gathering the updates (nanochat's
    ``DistMuon``, modded-nanogpt) would divide the work but is not done here.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        ns_steps: int = 5,
    ) -> None:
        """Create the optimizer.

        Args:
            params: 2-D parameters.
            lr: Learning rate (in units of the orthogonalised update's RMS-ish size).
            momentum: Momentum coefficient ``mu``.
            weight_decay: Decoupled weight decay, multiplied by ``lr``.
            nesterov: Use the Nesterov look-ahead.
            ns_steps: Newton-Schulz iterations.

        Raises:
            ValueError: When a parameter is not 2-D.
        """
        params = list(params)
        for param in params:
            if param.ndim != 2:
                raise ValueError(f"Muon takes 2-D parameters only, got shape {tuple(param.shape)}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one optimizer step (``closure`` is accepted for the Optimizer interface and called if given)."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            mu = group["momentum"]
            by_shape: dict[tuple[torch.Size, torch.dtype, torch.device], list[tuple[nn.Parameter, torch.Tensor]]] = {}
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad)
                buf: torch.Tensor = state["momentum_buffer"]
                buf.lerp_(grad, 1.0 - mu)
                update = grad.lerp(buf, mu) if group["nesterov"] else buf
                by_shape.setdefault((param.shape, param.dtype, param.device), []).append((param, update))
            for (shape, _, _), pairs in by_shape.items():
                stacked = orthogonalize(torch.stack([u for _, u in pairs]), group["ns_steps"])  # (n, rows, cols)
                # Orthogonal updates have RMS ~ 1/sqrt(max dim); this factor evens tall and wide matrices out.
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                for (param, _), update in zip(pairs, stacked.unbind(0), strict=True):
                    if group["weight_decay"]:
                        param.mul_(1.0 - group["lr"] * group["weight_decay"])
                    param.add_(update * scale, alpha=-group["lr"])
        return loss


def _embedding_and_head_params(model: nn.Module) -> set[int]:
    """Ids of parameters owned by embeddings or by a module named ``lm_head`` (kept off Muon)."""
    ids: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) or name.split(".")[-1] == "lm_head":
            ids.update(id(p) for p in module.parameters(recurse=False))
    return ids


def build_optimizers(
    model: nn.Module,
    *,
    optimizer: OptimizerName = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    muon_lr: float = 0.02,
    muon_momentum: float = 0.95,
    muon_weight_decay: float = 0.0,
    fused: bool | None = None,
) -> list[torch.optim.Optimizer]:
    """Build the optimizers for ``model``; every group records its ``base_lr`` for the schedule.

    Args:
        model: The (unwrapped) model.
        optimizer: ``"adamw"`` for everything, or ``"muon"`` for hidden matrices plus AdamW for the rest.
        lr: AdamW base learning rate.
        weight_decay: AdamW's decoupled weight decay for matrices and embeddings.
        betas: AdamW betas.
        eps: AdamW epsilon.
        muon_lr: Muon base learning rate.
        muon_momentum: Muon momentum.
        muon_weight_decay: Muon's decoupled weight decay (times its much larger learning rate).
        fused: Use the fused AdamW kernel; ``None`` picks it when every parameter is on CUDA or CPU.

    Returns:
        One or two optimizers; step all of them each iteration (see :func:`set_learning_rate`).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon_params: list[nn.Parameter] = []
    if optimizer == "muon":
        excluded = _embedding_and_head_params(model)
        muon_params = [p for _, p in named if p.ndim == 2 and id(p) not in excluded]
    muon_ids = {id(p) for p in muon_params}
    decay = [p for _, p in named if p.ndim >= 2 and id(p) not in muon_ids]
    no_decay = [p for _, p in named if p.ndim < 2]
    if fused is None:
        fused = all(p.device.type in {"cuda", "cpu"} for _, p in named)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "base_lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "base_lr": lr},
    ]
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)
    ]
    if muon_params:
        muon = Muon(muon_params, lr=muon_lr, momentum=muon_momentum, weight_decay=muon_weight_decay)
        for group in muon.param_groups:
            group["base_lr"] = muon_lr
        optimizers.append(muon)
    return optimizers


def set_learning_rate(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
    """Set every group's ``lr`` to its ``base_lr`` times ``multiplier`` (the schedule's value this step)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * multiplier


def optimizer_step(
    optimizers: list[torch.optim.Optimizer],
    parameters: Iterable[nn.Parameter],
    *,
    lr_multiplier: float,
    grad_clip: float,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """After the backward passes: unscale (fp16) → clip → set the learning rate → step → zero the gradients.

    Args:
        optimizers: Every optimizer of the model.
        parameters: The parameters whose gradient norm is clipped.
        lr_multiplier: The schedule's multiplier of each group's base learning rate.
        grad_clip: Clip the global gradient norm to this (0: no clipping).
        scaler: The fp16 gradient scaler, if any.
    """
    if scaler is not None:
        for opt in optimizers:
            scaler.unscale_(opt)
    if grad_clip > 0:
        clip_grad_norm(parameters, grad_clip)  # sharded or not
    set_learning_rate(optimizers, lr_multiplier)
    for opt in optimizers:
        if scaler is not None:
            scaler.step(opt)
        else:
            opt.step()
    if scaler is not None:
        scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)

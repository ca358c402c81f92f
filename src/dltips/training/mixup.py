"""Mixup: train on convex combinations of pairs of examples and their labels.

Zhang et al., "mixup: Beyond Empirical Risk Minimization" (ICLR 2018) draw
lam ~ Beta(alpha, alpha) and train on lam*x_i + (1-lam)*x_j with the label
mixed the same way. Small alpha (0.1-0.4 in the paper's ImageNet runs) keeps
most mixes close to one of the two originals; alpha=1 mixes uniformly.

    mixup = Mixup(alpha=0.4, n_classes=10)
    for x, y in loader:
        x, y = mixup(x, y)            # y becomes (N, C) probabilities
        loss = F.cross_entropy(model(x), y)

`F.cross_entropy` accepts class probabilities as targets, and because it is
linear in the target, the loss on the mixed label equals
lam * loss(y_i) + (1 - lam) * loss(y_j) exactly.

Integer inputs (category or token ids) have no convex combination. With
`Mixup(ids="model")` a dict batch keeps its integer entries as they are and
gains `MIXUP_LAM` and `MIXUP_PERM`, so a model that understands them (such as
`dltips.tabular.model.TabularModel`) mixes its own embedding outputs instead.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dltips.core.params import ParamError, instance, one_of, optional_int, positive, positive_int, probability

Batch = Tensor | Mapping[str, Tensor]

MIXUP_LAM = "mixup_lam"  # dict key of the per-row weights (float32, (N,)) under Mixup(ids="model")
MIXUP_PERM = "mixup_perm"  # dict key of the partner indices (long, (N,)) under Mixup(ids="model")
ID_MODES = ("error", "model")


class Mixup(nn.Module):
    """Mix each example with a random partner from the same batch.

    Training mode only: in eval mode `forward` returns its inputs untouched,
    so the same call can sit in a shared train/eval step without corrupting
    predictions or validation metrics.

    Args:
        alpha: concentration of the Beta(alpha, alpha) mixing distribution, > 0.
        n_classes: number of classes; required when targets are integer ids.
        label_smoothing: eps in onehot*(1-eps) + eps/C, applied to integer ids.
        generator: a torch.Generator for reproducible draws; without one the
            global torch RNG is used, so `torch.manual_seed` reproduces too.
        ids: what to do with integer (or bool) entries of a dict batch. "error" (the
            default) raises TypeError. "model" passes them through unchanged,
            mixes the floating entries, and adds `x[MIXUP_LAM]` (float32, (N,))
            and `x[MIXUP_PERM]` (long, (N,)), so that the model can mix its
            embedding outputs row by row: lam*e + (1-lam)*e[perm]. Only a model
            that reads these two entries should get such batches. A plain
            integer tensor still raises: there is nothing to attach the mix to.
    """

    def __init__(
        self,
        alpha: float = 0.4,
        n_classes: int | None = None,
        label_smoothing: float = 0.0,
        generator: torch.Generator | None = None,
        ids: str = "error",
    ) -> None:
        super().__init__()
        self.alpha = positive("alpha", alpha)
        self.n_classes = optional_int("n_classes", n_classes)
        self.label_smoothing = probability("label_smoothing", label_smoothing)
        self.generator = None if generator is None else instance(
            "generator", generator, torch.Generator, "a torch.Generator or None")
        self.ids = one_of("ids", ids, ID_MODES)
        self.last_lam: Tensor | None = None
        self.last_perm: Tensor | None = None

    def extra_repr(self) -> str:
        text = f"alpha={self.alpha}, n_classes={self.n_classes}, label_smoothing={self.label_smoothing}"
        return text if self.ids == "error" else f"{text}, ids={self.ids!r}"

    def sample(self, n: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """Draw per-sample weights `lam` (float32, shape (n,), in [0.5, 1]) and a partner permutation.

        lam is folded to max(lam, 1 - lam): mixing i with j at lam and j with i
        at 1 - lam are the same pair, so folding loses nothing, and it makes
        every mixed example dominated by the original at its own index. That
        keeps the example's identity (its index in the batch, any per-sample
        weights or bookkeeping) attached to the image it mostly shows.

        torch's Beta sampler takes no generator, so one 63-bit seed is drawn
        from the torch RNG (the given generator, or the global one) and used
        to seed numpy's exact Beta sampler. The whole draw is thus a function
        of the torch RNG state.
        """
        n = positive_int("n", n)
        g = self.generator
        rng_device = g.device if g is not None else torch.device("cpu")
        seed = int(torch.randint(2**63 - 1, (1,), generator=g, device=rng_device))
        lam = np.random.default_rng(seed).beta(self.alpha, self.alpha, size=n)
        lam = np.maximum(lam, 1.0 - lam)
        perm = torch.randperm(n, generator=g, device=rng_device)
        return (
            torch.as_tensor(lam, dtype=torch.float32, device=device),
            perm.to(device),
        )

    def mix(self, x: Batch, y: Tensor, lam: Tensor, perm: Tensor) -> tuple[Batch, Tensor]:
        """Return (lam*x + (1-lam)*x[perm], same for y), with integer y turned into probabilities first.

        With ids="model", integer entries of a dict x are kept and lam, perm are added to it.
        """
        n = _batch_size(x, keep_ids=self.ids == "model")
        if not isinstance(y, Tensor):
            raise TypeError(f"y must be a Tensor, got {type(y).__name__}")
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(f"y must have the same batch size as x ({n}), got shape {tuple(y.shape)}")
        if lam.shape != (n,) or perm.shape != (n,):
            raise ValueError(
                f"lam and perm must have shape ({n},), got {tuple(lam.shape)} and {tuple(perm.shape)}"
            )
        if isinstance(x, Tensor):
            x_mix: Batch = _mix_tensor(x, lam, perm)
        elif self.ids == "model":
            x_mix = {k: _mix_tensor(v, lam, perm) if v.is_floating_point() else v for k, v in x.items()}
            x_mix[MIXUP_LAM] = lam.to(_device(x))
            x_mix[MIXUP_PERM] = perm.to(device=_device(x), dtype=torch.long)
        else:
            x_mix = {k: _mix_tensor(v, lam, perm) for k, v in x.items()}
        return x_mix, _mix_tensor(self._targets(y), lam, perm)

    def forward(self, x: Batch, y: Tensor) -> tuple[Batch, Tensor]:
        if not self.training:
            return x, y
        n = _batch_size(x, keep_ids=self.ids == "model")
        lam, perm = self.sample(n, device=_device(x))
        out = self.mix(x, y, lam, perm)
        self.last_lam, self.last_perm = lam, perm
        return out

    def check_loss(self, loss_fn, output: Tensor) -> None:
        """Raise ParamError unless `loss_fn(output, mixed labels)` runs: mixed integer labels are class
        probabilities of shape (N, C), which `F.cross_entropy` takes and `F.nll_loss` does not."""
        if self.n_classes is None or output.dim() < 2:
            return
        soft = torch.full((output.shape[0], self.n_classes), 1.0 / self.n_classes, dtype=output.dtype,
                          device=output.device)
        try:
            loss_fn(output, soft)
        except Exception as e:
            raise ParamError(
                f"Mixup turns class ids into class probabilities of shape {tuple(soft.shape)}, and the loss it is "
                f"paired with does not take them ({type(e).__name__}: {e}). Use F.cross_entropy on logits, which "
                "takes probabilities as targets; for a model that returns log-probabilities (log_softmax + "
                "nll_loss), a loss such as lambda out, t: -(t * out).sum(1).mean(); or turn mixup off") from e

    def _targets(self, y: Tensor) -> Tensor:
        """Turn integer ids into (smoothed) one-hot probabilities with the class dim at 1."""
        if y.is_floating_point():
            return y
        if y.dtype == torch.bool:
            return y.to(torch.get_default_dtype())  # multi-label masks
        if y.is_complex():
            raise TypeError("y must hold integer class ids or floating targets, got a complex tensor")
        if self.n_classes is None:
            raise ValueError(
                "y holds integer class ids, so Mixup needs n_classes to build one-hot targets; "
                "pass Mixup(n_classes=...) or give floating (soft) targets"
            )
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= self.n_classes:
            raise ValueError(
                f"class ids must be in [0, n_classes={self.n_classes}), got min {lo} and max {hi} "
                "(ignore_index values cannot be mixed; drop or remap them first)"
            )
        onehot = F.one_hot(y.long(), self.n_classes).to(torch.get_default_dtype())
        onehot = onehot.movedim(-1, 1)
        eps = self.label_smoothing
        return onehot * (1.0 - eps) + eps / self.n_classes if eps > 0 else onehot


def _mix_tensor(t: Tensor, lam: Tensor, perm: Tensor) -> Tensor:
    if not t.is_floating_point():
        raise TypeError(
            f"only floating tensors can be mixed, got dtype {t.dtype}; integer inputs such as "
            "token ids have no meaningful convex combination, so mix the embeddings instead"
        )
    w = lam.to(device=t.device, dtype=t.dtype).view(-1, *([1] * (t.ndim - 1)))
    return w * t + (1 - w) * t[perm.to(t.device)]


def _batch_size(x: Batch, keep_ids: bool = False) -> int:
    """The batch size of x, after checking that every entry can be mixed (or, with keep_ids, kept)."""
    if isinstance(x, Tensor):
        if keep_ids and not x.is_floating_point():
            raise TypeError(
                f"x is a plain tensor of dtype {x.dtype}; Mixup(ids='model') needs a dict batch to attach "
                f"{MIXUP_LAM!r} and {MIXUP_PERM!r} to, e.g. {{'categorical': ids, 'continuous': values}}"
            )
        if x.ndim == 0:
            raise ValueError("x must have a batch dimension, got a 0-d tensor")
        if x.shape[0] == 0:
            raise ValueError("x must hold at least one example, got batch size 0")
        return x.shape[0]
    if not isinstance(x, Mapping):
        raise TypeError(f"x must be a Tensor or a dict of Tensors, got {type(x).__name__}")
    if not x:
        raise ValueError("x is an empty dict; nothing to mix")
    if keep_ids:
        taken = [k for k in (MIXUP_LAM, MIXUP_PERM) if k in x]
        if taken:
            raise ValueError(f"x already holds {taken}; Mixup(ids='model') adds these entries itself, so rename them")
    sizes = {}
    for k, v in x.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"x[{k!r}] must be a Tensor, got {type(v).__name__}")
        if v.is_complex():
            raise TypeError(f"x[{k!r}] is complex; only floating (or, with ids='model', integer) entries are allowed")
        if not v.is_floating_point() and not keep_ids:
            raise TypeError(
                f"x[{k!r}] has dtype {v.dtype}; only floating tensors can be mixed. Integer entries "
                "such as token ids have no meaningful convex combination: mix the embedding outputs instead "
                "(Mixup(ids='model') hands the mix to a model that does)"
            )
        if v.ndim == 0:
            raise ValueError(f"x[{k!r}] must have a batch dimension, got a 0-d tensor")
        sizes[k] = v.shape[0]
    if len(set(sizes.values())) != 1:
        raise ValueError(f"all entries of x must share the batch size, got {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError("x must hold at least one example, got batch size 0")
    return n


def _device(x: Batch) -> torch.device:
    return x.device if isinstance(x, Tensor) else next(iter(x.values())).device

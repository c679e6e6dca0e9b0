r"""Step 3 of quantization-aware training: train the simulated quantization network.

"Repeat the following steps until the network converges: calculate the ranges q_min and q_max for the
weights and activation values of the quantization network layers, and back-propagate the forward
calculation to update the network weight parameters." Each forward pass of :func:`qat_train` in
training mode recomputes the weight ranges from the current weights and moves the activation ranges
(running min/max or exponential moving average; frozen after ``freeze_act_after`` steps), the loss
goes backward through the straight-through fake-quant nodes, and the optimizer updates the float
(latent) weights — and the learned step sizes / clips when LSQ or PACT is used.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .._checks import model_device
from ..models import evaluate
from .network import QATModel

__all__ = ["History", "qat_train"]


@dataclass
class History:
    """What a run recorded: one dict per logged step {"step", "loss", "batch_acc", "test_acc" (or None)},
    the wall-clock ``seconds`` of the run (evaluations included) and the number of ``steps`` done."""

    records: list = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0

    def column(self, key: str) -> list:
        """One field of every record, e.g. ``history.column("test_acc")``."""
        return [r[key] for r in self.records]


def _batches(data, batch_size: int, gen: torch.Generator):
    """Endless (x, y) batches: seeded reshuffles of (x, y) tensors, or a loader cycled."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(f"data must be non-empty (x, y) of equal length; got {len(x)} images and "
                             f"{len(y)} labels. Use quantlab.data.load_mnist('train').")
        while True:
            order = torch.randperm(len(y), generator=gen)
            for k in range(0, len(y), batch_size):
                idx = order[k:k + batch_size]
                yield x[idx], y[idx]
    try:
        iter(data)
    except TypeError:
        raise TypeError(f"data must be (x, y) tensors or an iterable of (x, y) batches (a DataLoader); got "
                        f"{type(data).__name__}.") from None
    while True:
        n = 0
        for xb, yb in data:
            n += 1
            yield xb, yb
        if n == 0:
            raise ValueError("the data loader is empty: it yielded no batch. Check its dataset and "
                             "batch_size (drop_last=True with fewer samples than one batch gives none).")


def _check_args(model, steps, lr, batch_size):
    if not isinstance(model, QATModel):
        raise TypeError(f"model must be a simulated quantization network (a QATModel from prepare_qat); "
                        f"got {type(model).__name__}. Build it with quantlab.qat.prepare_qat(model, ranges).")
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int; got {v!r}.")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0; got {lr!r}.")


def qat_train(model: QATModel, data, steps: int = 300, lr: float = 3e-4, batch_size: int = 64,
              eval_data=None, eval_every: int = 50, freeze_act_after: int | None = None, device=None,
              seed: int = 0, threads: int | None = 1, progress: bool = True, callback=None) -> History:
    r"""Step 3: fine-tune the simulated quantization network ``model`` in place (Adam, cosine decay).

    Each step: forward in training mode (weight ranges from the current weights; activation ranges
    updated by their observer until ``freeze_act_after`` steps), cross-entropy loss, backward through the
    straight-through nodes, optimizer step. Every ``eval_every`` steps (and at the end) a record is kept
    with the test accuracy on ``eval_data`` = (x, y) (fake-quant model, eval mode) and ``callback(record,
    model)`` is called (return False to stop early). A tqdm bar shows progress.

    data: (x, y) tensors (x float (N, 1, 28, 28), y int64 (N,)) reshuffled with ``seed``, or an iterable
    of (x, y) batches. device: where to train (default: the model's device; "cuda" uses the GPU, data are
    moved batch by batch). threads: torch threads during the run (restored after; None leaves them).

    Divergence: if the loss or a parameter becomes NaN/inf, the model is restored to its state before
    that step and ValueError says at which step and what to change. Also raises TypeError for a model
    that is not a QATModel, ValueError for bad steps/lr/batch_size or empty data. Returns a
    :class:`History`; the model is left in eval mode.

    >>> hist = qat_train(qat, load_mnist("train"), steps=200)                 # doctest: +SKIP
    """
    _check_args(model, steps, lr, batch_size)
    from tqdm.auto import tqdm

    dev = torch.device(device) if device is not None else model_device(model)
    model.to(dev)
    was_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        batches = _batches(data, batch_size, torch.Generator().manual_seed(seed))
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        hist, t0 = History(), time.perf_counter()
        model.train()
        if eval_data is not None:
            eval_data = (eval_data[0].to(dev), eval_data[1].to(dev))
        bar = tqdm(total=steps, desc="QAT fine-tune", disable=not progress, leave=False)
        for step in range(1, steps + 1):
            if freeze_act_after is not None and step > freeze_act_after:
                model.freeze_activations()
            xb, yb = next(batches)
            loss, acc = _step(model, opt, xb.to(dev), yb.to(dev), step)
            sched.step()
            bar.update(1)
            hist.steps = step
            if step % eval_every == 0 or step == steps:
                rec = {"step": step, "loss": loss, "batch_acc": acc,
                       "test_acc": evaluate(model, *eval_data) if eval_data is not None else None}
                hist.records.append(rec)
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{rec['test_acc'] or acc:.3f}")
                if callback is not None and callback(rec, model) is False:
                    break
        bar.close()
        hist.seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(was_threads)
        model.freeze_activations(False)
        model.eval()
    return hist


def _step(model: nn.Module, opt, xb, yb, step: int) -> tuple[float, float]:
    """One training step; on NaN/inf restore the model as it was before it and raise ValueError."""
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        logits = model(xb)
        loss = nn.functional.cross_entropy(logits, yb)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"the loss is {float(loss)}")
        opt.zero_grad()
        loss.backward()
        opt.step()
        bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise FloatingPointError(f"parameters {bad[:4]} became NaN/inf")
    except (FloatingPointError, ValueError) as e:
        if isinstance(e, ValueError) and "NaN/inf" not in str(e):
            model.load_state_dict(before)
            raise
        model.load_state_dict(before)
        raise ValueError(f"QAT diverged at step {step}: {e}. The model is restored to its state before that "
                         "step; lower the learning rate (lr) or check the data for NaN/inf.") from None
    return float(loss.detach()), float((logits.argmax(1) == yb).float().mean())

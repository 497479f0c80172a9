"""Validation metrics of masked-magnitude reconstruction, summed over every process."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from modeling_astromer.modeling_astromer import per_window_sum


@torch.no_grad()
def evaluate_reconstruction(model, dataloader, accelerator: Accelerator, use_weights: bool) -> dict[str, float]:
    """Validation metrics over the whole split (all processes).

    Returns the official (uncertainty-weighted) masked RMSE ``sqrt(mean_windows(sum m w e² / sum m))`` as
    ``rmse``, the unweighted RMSE over all probed points (``rmse_unweighted``), R² of the probed magnitudes around
    their window means (``r2``) and the number of windows (``n_windows``). ``m`` is the loss mask, ``w`` the loss
    weights (ones with ``use_weights=False``) and ``e`` the reconstruction error.

    Each batch is gathered while ``dataloader`` is the one being iterated: ``gather_for_metrics`` drops the samples
    that even batches repeat at the end of *the current* loader, so gathering after the loop would apply the training
    loader's remainder instead (when validation runs at the end of a training epoch) and drop real windows.
    """
    model.eval()
    rows = []
    for batch in dataloader:
        output = model(**batch)
        recon = output.reconstruction.float()
        labels = batch["labels"].float()
        cu_seqlens = batch.get("cu_seqlens")  # packed batches: sums per packed window; fillers dropped below
        mask = batch["loss_mask"].float()
        weights = batch["loss_weights"].float() if use_weights else torch.ones_like(mask)
        squared = (labels - recon).pow(2) * mask
        sums = [squared * weights, mask, squared, labels * mask, labels.pow(2) * mask]
        stats = torch.stack([per_window_sum(x, cu_seqlens) for x in sums], -1)
        if cu_seqlens is not None:
            stats = stats[batch["sequence_index"] >= 0]
        rows.append(accelerator.gather_for_metrics(stats))
    stats = torch.cat(rows).double()
    model.train()
    weighted, count, squared, label_sum, label_sq = stats.unbind(-1)
    per_window = torch.where(count > 0, weighted / count.clamp_min(1), 0.0)
    total = (label_sq - label_sum.pow(2) / count.clamp_min(1)).sum()  # sum of (y - ybar_window)^2
    return {
        "rmse": float(per_window.mean().sqrt()),
        "rmse_unweighted": float((squared.sum() / count.sum().clamp_min(1)).sqrt()),
        "r2": float(1.0 - squared.sum() / total) if total > 0 else float("nan"),
        "n_windows": int(count.numel()),
    }


__all__ = ["evaluate_reconstruction"]

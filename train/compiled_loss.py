"""The training loss of a model as a compiled graph (``astromer pretrain --compile``).

:class:`CompiledTrainingLoss` wraps ``model(**batch).loss`` in ``torch.compile``; the backward pass is compiled with
it (AOTAutograd), the optimizer step stays eager. Shapes are static (``dynamic=False``): batches packed to a fixed
token budget and a fixed number of sequences (``AstromerPackingCollator(pad_to_budget=True, max_sequences=...)``), or
padded to the window size, all share one graph whatever their mix of window lengths; a batch of another shape (the
short last batch of an epoch, unpacked) compiles one more graph.

With ``cuda_graphs`` the graph runs under ``mode="reduce-overhead"``: forward and backward are replayed as CUDA graphs
whose outputs live in memory that the next replay overwrites. Each call therefore starts a new step
(``torch.compiler.cudagraph_mark_step_begin``) and returns a copy of the loss; parameter gradients written by the
backward graph are read by the optimizer step before the next call, and the training loop sets them to ``None`` after
every step (gradient accumulation across calls is refused for this reason).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["CompiledTrainingLoss", "eager_training_loss"]


def eager_training_loss(model: Callable[..., Any]) -> Callable[[Mapping[str, Any]], torch.Tensor]:
    """The uncompiled loss: ``batch -> model(**batch).loss``."""

    def loss(batch: Mapping[str, Any]) -> torch.Tensor:
        return model(**batch).loss

    return loss


class CompiledTrainingLoss:
    """``batch -> model(**batch).loss`` compiled with ``torch.compile``.

    Args:
        model: the (possibly Accelerate-prepared) model; its forward must return an output with ``loss``.
        fullgraph: require one graph without breaks (a single process); a DDP-wrapped model needs ``False``, so its
            graph can be split at the gradient buckets.
        cuda_graphs: ``mode="reduce-overhead"`` (CUDA only; see the module docstring).
        backend: the ``torch.compile`` backend (``"inductor"``; tests use ``"aot_eager"``).
    """

    def __init__(self, model: Callable[..., Any], *, fullgraph: bool = True, cuda_graphs: bool = False,
                 backend: str = "inductor") -> None:
        self.model = model
        self.fullgraph = fullgraph
        self.cuda_graphs = cuda_graphs
        self._compiled = torch.compile(eager_training_loss(model), fullgraph=fullgraph, dynamic=False,
                                       backend=backend, mode="reduce-overhead" if cuda_graphs else None)

    def __call__(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if self.fullgraph:
            loss = self._compiled(batch)
        else:
            # The blocked attention's custom op returns a tensor whose size depends on the data; a fullgraph compile
            # accepts that by itself, a split one only with this setting.
            with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
                loss = self._compiled(batch)
        return loss.clone() if self.cuda_graphs else loss

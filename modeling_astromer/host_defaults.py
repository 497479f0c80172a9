"""The attention implementation a loaded model runs fastest with on this machine, chosen by a short timed probe.

On a CPU the candidates are ``astromer_blocked`` (blocked GEMM attention over packed windows) and ``sdpa``; which
one is faster depends on the CPU (AMX or AVX-512 bf16 or neither), the precision, the thread count and the OpenMP
wait policy, so :func:`choose_attn_implementation` times both on a small batch of full windows with the loaded
model and caches the winner per host and torch version (:func:`astromer_kernels.host.select_fastest`); sdpa must be
faster by more than 10 % to replace the blocked path, which also skips padding. A candidate
that raises is never chosen (``sdpa`` is the fallback), and a forced choice is used as is. ``ASTROMER_HOST_PROBE=0``
skips the probe and keeps the blocked path (the test suite does, so that its paths do not depend on the load). On a GPU the choice is
the packed Triton kernel ``astromer_varlen`` (it falls back to blocked attention where Triton cannot run), and
Astromer 1, whose query-key bias the packed kernels do not take, keeps ``sdpa``.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

from astromer_kernels.host import Selection, host_info, probe_enabled, select_fastest

from .modeling_astromer import AstromerPreTrainedModel

__all__ = ["CPU_CANDIDATES", "choose_attn_implementation"]

logger = logging.getLogger("modeling_astromer.host_defaults")

#: The preferred first: the blocked path also runs short windows packed back to back (no padding), a gain the probe's
#: full windows do not show, so sdpa replaces it only when faster by more than :data:`SDPA_MARGIN`.
CPU_CANDIDATES = ("astromer_blocked", "sdpa")
SDPA_MARGIN = 0.1
FALLBACK = "sdpa"


def _probe_inputs(config, windows: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``windows`` full windows of a smooth, noisy signal (fixed seed)."""
    generator = torch.Generator().manual_seed(0)
    length = config.window_size
    times = torch.cumsum(torch.rand(windows, length, generator=generator) * 3, dim=1)
    times = times - times.mean(dim=1, keepdim=True)
    magnitudes = 0.3 * torch.sin(times / 7) + 0.05 * torch.randn(windows, length, generator=generator)
    return {"magnitudes": magnitudes.to(device), "times": times.to(device),
            "attention_mask": torch.ones(windows, length, dtype=torch.long, device=device)}


def _task(config, precision: str) -> str:
    """The cache key of one choice: the model's shape, the precision, the thread count and the OpenMP policy (the
    blocked path's speed on shared cores depends on it)."""
    return (f"embed {precision} L{config.num_hidden_layers} d{config.hidden_size} f{config.intermediate_size} "
            f"w{config.window_size} threads {torch.get_num_threads()} "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")


def choose_attn_implementation(
    model: AstromerPreTrainedModel,
    forced: str | None = None,
    precision: str = "fp32",
    probe_windows: int = 32,
) -> Selection:
    """Set ``model``'s attention implementation to the fastest working one on this machine and return the choice.

    Args:
        model: a loaded Astromer model (any head; its encoder is probed in eval mode).
        forced: the user's explicit implementation: set as is, no probe.
        precision: ``"fp32"``, or ``"bf16"`` to probe under bf16 autocast (the caller's opt-in precision).
        probe_windows: full windows per timed forward pass (32 take a fraction of a second on 2 cores).
    """
    config = model.config
    if forced is not None:
        selection = Selection(forced, "requested")
    elif model.device.type == "cuda":
        selection = Selection("astromer_varlen", "GPU: the packed Triton kernel")
    elif config.attention_bias_mode == "a1_query_key_bias":
        selection = Selection(FALLBACK, "Astromer 1's query-key bias needs a dense mask")
    elif not probe_enabled():
        current = config._attn_implementation
        selection = Selection(current if current in CPU_CANDIDATES else CPU_CANDIDATES[0],
                              "ASTROMER_HOST_PROBE=0: the rule's choice, not probed")
    else:
        encoder = getattr(model, "astromer", model)
        inputs = _probe_inputs(config, probe_windows, model.device)
        autocast = (torch.autocast(model.device.type, dtype=torch.bfloat16) if precision == "bf16"
                    else contextlib.nullcontext())
        was_training = model.training
        model.eval()

        def run(candidate: str) -> None:
            model.set_attn_implementation(candidate)
            with torch.inference_mode(), autocast:
                vectors = encoder.embed(**inputs, pooling="mean")
            if not torch.isfinite(vectors).all():
                raise FloatingPointError(f"{candidate} gave non-finite embeddings")

        try:
            selection = select_fastest(_task(config, precision), CPU_CANDIDATES, run, fallback=FALLBACK,
                                       keep_first_within=SDPA_MARGIN)
        finally:
            model.train(was_training)
    model.set_attn_implementation(selection.choice)
    logger.info("attention implementation on %s: %s", host_info().describe(), selection.describe("Astromer"))
    return selection

"""PyTorch Astromer: a BERT-style encoder of irregularly sampled light curves (Astromer 2, and Astromer 1 weights).

This file is self-contained (it only imports its sibling configuration file) because it is also shipped as Hub remote
code. Shapes use B = windows in a batch, L = observations per window (<= `config.window_size`), D = `hidden_size`,
T = total tokens of a packed batch, N = `num_hidden_layers`.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, auto_docstring
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_astromer import POOLING_MODES, AstromerConfig, resolve_bundled_name


# ----------------------------------------------------------------------------------------------------------------
# Functional helpers: loss weights, masked pooling, packed segments
# ----------------------------------------------------------------------------------------------------------------
def compute_loss_weights(errors: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The official uncertainty weights of the masked-reconstruction loss (main-code `create_loss_weigths`).

    Per window, `u = 1/sigma` (0 where sigma = 0) and `w = (u - min u) / (max u - min u) + 1e-3` over all positions,
    padding taking sigma = the window-mean error of its real observations (so it cannot change the min or max); a
    window of constant sigma (0/0) gets `w = 1e-3` everywhere.

    Args:
        errors: `(B, L)` original (not centred) magnitude uncertainties; padding values are ignored.
        attention_mask: `(B, L)`, 1 = observed.

    Returns:
        `(B, L)` weights in the dtype of `errors`, computed in float64.
    """
    sigma = errors.to(torch.float64)
    real = attention_mask.to(torch.bool)
    n_real = real.sum(dim=-1, keepdim=True).clamp_min(1)
    window_mean = torch.where(real, sigma, 0.0).sum(dim=-1, keepdim=True) / n_real
    sigma = torch.where(real, sigma, window_mean)
    inverse = torch.where(sigma != 0, 1.0 / torch.where(sigma != 0, sigma, 1.0), 0.0)
    low = inverse.amin(dim=-1, keepdim=True)
    span = inverse.amax(dim=-1, keepdim=True) - low
    scaled = torch.where(span > 0, (inverse - low) / torch.where(span > 0, span, 1.0), 0.0)
    return (scaled + 1e-3).to(errors.dtype)


def packed_segment_ids(cu_seqlens: torch.Tensor, total_tokens: int) -> torch.Tensor:
    """`(T,)` index of the packed sequence each token belongs to, from `cu_seqlens` `(n+1,)`."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(
        torch.arange(lengths.numel(), device=cu_seqlens.device), lengths, output_size=total_tokens
    )


def packed_max_seqlen(cu_seqlens: torch.Tensor, total_tokens: int) -> int:
    """The longest packed sequence of `cu_seqlens` `(n+1,)`; inside a compiled graph, the bound `total_tokens`
    instead (reading the value would tie the graph to the data; any bound is valid for the attention functions)."""
    if torch.compiler.is_compiling():
        return total_tokens
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


def within_packed_sequence(cu_seqlens: torch.Tensor, total_tokens: int) -> Callable:
    """Mask function (transformers' `(batch_idx, head_idx, q_idx, kv_idx) -> bool` convention) that lets a query
    attend only to the keys of its own packed sequence."""
    segments = packed_segment_ids(cu_seqlens, total_tokens)

    def same_sequence(batch_idx, head_idx, q_idx, kv_idx):
        return segments[q_idx] == segments[kv_idx]

    return same_sequence


def masked_mean(
    hidden_states: torch.Tensor,
    weights: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over the positions where `weights` is 1.

    Padded: `hidden_states` `(B, L, D)`, `weights` `(B, L)` -> `(B, D)`.
    Packed: `hidden_states` `(1, T, D)`, `weights` `(1, T)`, `cu_seqlens` `(n+1,)` -> `(n, D)`.
    Rows without any selected position give 0.
    """
    weights = weights.to(hidden_states.dtype)
    if cu_seqlens is None:
        total = (hidden_states * weights.unsqueeze(-1)).sum(dim=1)
        count = weights.sum(dim=1, keepdim=True)
    else:
        segments = packed_segment_ids(cu_seqlens, hidden_states.shape[1])
        n_sequences = cu_seqlens.numel() - 1
        weighted = hidden_states[0] * weights[0].unsqueeze(-1)
        total = weighted.new_zeros(n_sequences, weighted.shape[-1]).index_add_(0, segments, weighted)
        count = weights.new_zeros(n_sequences).index_add_(0, segments, weights[0]).unsqueeze(-1)
    return total / count.clamp_min(1)


def masked_max(
    hidden_states: torch.Tensor,
    weights: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Maximum over the positions where `weights` is 1 (same layouts as [`masked_mean`]); empty rows give 0."""
    selected = weights.to(torch.bool).unsqueeze(-1)
    lowest = torch.finfo(hidden_states.dtype).min
    filled = hidden_states.masked_fill(~selected, lowest)
    if cu_seqlens is None:
        result = filled.amax(dim=1)
    else:
        segments = packed_segment_ids(cu_seqlens, hidden_states.shape[1])
        n_sequences = cu_seqlens.numel() - 1
        index = segments.unsqueeze(-1).expand_as(filled[0])
        result = filled.new_full((n_sequences, filled.shape[-1]), lowest).scatter_reduce(
            0, index, filled[0], reduce="amax", include_self=True
        )
    return torch.where(result == lowest, torch.zeros_like(result), result)


def per_window_sum(values: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over positions: `(B, L)` -> `(B,)`, or packed `(1, T)` -> `(n,)`."""
    if cu_seqlens is None:
        return values.sum(dim=-1)
    segments = packed_segment_ids(cu_seqlens, values.shape[-1])
    return values.new_zeros(cu_seqlens.numel() - 1).index_add_(0, segments, values.reshape(-1))


def skip_embedding(layer_means: torch.Tensor, layer_logits: torch.Tensor) -> torch.Tensor:
    """The paper's gamma-weighted skip embedding: `mean_k(softmax(g)_k * e_k)`.

    Args:
        layer_means: `(B, K, D)` masked mean of each used layer output.
        layer_logits: `(K,)` the trainable `g` (init `1/K`).

    Returns:
        `(B, D)`. The constant factor `1/K` of the official `reduce_mean` after weighting is kept.
    """
    gamma = torch.softmax(layer_logits.to(layer_means.dtype), dim=0)
    return (layer_means * gamma[None, :, None]).mean(dim=1)


def masked_rmse_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_weights: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The official uncertainty-weighted masked RMSE (main-code `custom_rmse`).

    `sqrt( mean_b [ sum_t m w (y - y_hat)^2 / sum_t m ] )`, a window with no probed position contributing 0 to the
    mean (it still counts in B). Inputs are `(B, L)`, or packed `(1, T)` with `cu_seqlens`. With `attention_mask`,
    B counts only windows with at least one observation, so the filler sequences of a fixed token budget do not
    dilute the mean.
    """
    squared = (target - prediction).pow(2) * loss_mask
    if loss_weights is not None:
        squared = squared * loss_weights
    numerator = per_window_sum(squared, cu_seqlens)
    denominator = per_window_sum(loss_mask.to(squared.dtype), cu_seqlens)
    per_window = torch.where(denominator > 0, numerator / denominator.clamp_min(1e-12), 0.0)
    if attention_mask is None:
        return per_window.mean().sqrt()
    observed = (per_window_sum(attention_mask.to(squared.dtype), cu_seqlens) > 0).to(squared.dtype)
    return ((per_window * observed).sum() / observed.sum().clamp_min(1)).sqrt()


def masked_r2_score(
    prediction: torch.Tensor,
    target: torch.Tensor,
    loss_mask: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The official R^2 (main-code `custom_r2`): `1 - sum m (y - y_hat)^2 / sum m (y - mean_b y)^2` over the batch."""
    loss_mask = loss_mask.to(target.dtype)
    count = per_window_sum(loss_mask, cu_seqlens).clamp_min(1)
    window_mean = per_window_sum(target * loss_mask, cu_seqlens) / count
    if cu_seqlens is None:
        centred = target - window_mean.unsqueeze(-1)
    else:
        centred = target - window_mean[packed_segment_ids(cu_seqlens, target.shape[-1])].unsqueeze(0)
    residual = ((target - prediction).pow(2) * loss_mask).sum()
    total = (centred.pow(2) * loss_mask).sum()
    return 1.0 - residual / total


# ----------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------
def astromer_time_frequencies(hidden_size: int, base: float) -> torch.Tensor:
    """`(D,)` angular frequencies `omega_i = 1 / base^(2i / D)` for i = 0..D-1, in float32 as TensorFlow computes them.

    Every dimension has its own frequency (`2i`, not `2 * floor(i / 2)`): even and odd dimensions are not sin/cos
    pairs. This is the official Astromer encoding, which the released weights were trained with.
    """
    exponent = (2.0 * torch.arange(hidden_size, dtype=torch.float32)) / float(hidden_size)
    return 1.0 / torch.pow(torch.tensor(float(base), dtype=torch.float32), exponent)


class AstromerEmbeddings(nn.Module):
    """Magnitude projection plus the time encoding: `Z_0 = Dense(m) + PE(t)`."""

    def __init__(self, config: AstromerConfig):
        super().__init__()
        self.config = config
        self.magnitude_proj = nn.Linear(1, config.hidden_size)
        if config.use_mask_token:
            self.mask_token = nn.Parameter(torch.zeros(()))
        self.register_buffer(
            "time_frequencies",
            astromer_time_frequencies(config.hidden_size, config.time_encoding_base),
            persistent=False,
        )

    def time_encoding(self, times: torch.Tensor) -> torch.Tensor:
        """`(..., L)` centred times in days -> `(..., L, D)`; sin on even, cos on odd dimensions, always in float32."""
        times = times.to(torch.float32).unsqueeze(-1)
        frequencies = self.time_frequencies.to(torch.float32)
        encoding = times.new_empty(*times.shape[:-1], frequencies.shape[0])
        encoding[..., 0::2] = torch.sin(times * frequencies[0::2])
        encoding[..., 1::2] = torch.cos(times * frequencies[1::2])
        return encoding

    def forward(
        self, magnitudes: torch.Tensor, times: torch.Tensor, hidden_positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            magnitudes: `(B, L)` centred magnitudes.
            times: `(B, L)` centred times in days.
            hidden_positions: `(B, L)` bool, positions to replace by the MASK token (only with `use_mask_token`).

        Returns:
            `(B, L, D)` input embedding Z_0 (before dropout).
        """
        dtype = self.magnitude_proj.weight.dtype
        magnitudes = magnitudes.to(dtype)
        if hidden_positions is not None and self.config.use_mask_token:
            magnitudes = torch.where(hidden_positions, self.mask_token.to(dtype), magnitudes)
        projected = self.magnitude_proj(magnitudes.unsqueeze(-1))
        return projected + self.time_encoding(times).to(projected.dtype)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention. `query/key/value` `(B, H, L, Dh)`, additive `attention_mask` `(B, 1, L, L)`.

    Returns the output `(B, L, H, Dh)` and the probabilities `(B, H, L, L)`.
    """
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attention_mask = torch.zeros_like(attention_mask, dtype=scores.dtype).masked_fill(
                ~attention_mask, torch.finfo(scores.dtype).min
            )
        scores = scores + attention_mask
    probabilities = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probabilities = nn.functional.dropout(probabilities, p=dropout, training=module.training)
    output = torch.matmul(probabilities, value).transpose(1, 2).contiguous()
    return output, probabilities


class AstromerAttention(nn.Module):
    """Multi-head self-attention with contiguous 64-wide head slices and an output projection ("attmerge")."""

    def __init__(self, config: AstromerConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`hidden_states` `(B, L, D)` -> `(B, L, D)` and, for eager, the attention probabilities."""
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs
        )
        output = output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(output), weights


class AstromerFeedForward(nn.Module):
    """The "mixer": `Dense_{F->D}(act(Dense_{D->F}(h)))`."""

    def __init__(self, config: AstromerConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.activation(self.fc_in(hidden_states)))


class AstromerLayer(GradientCheckpointingLayer):
    """One post-LayerNorm block, in the official order (main-code `attblock.py`):

    `h = LN1(Dropout(MHA(x)) + Leak1(x))`, `out = LN2(Dropout(FFN(h)) + Leak2(h))`; the "leak" terms are projected
    residuals (Dense D->D) in Astromer 2 and absent in Astromer 1.
    """

    def __init__(self, config: AstromerConfig, layer_idx: int):
        super().__init__()
        self.attention = AstromerAttention(config, layer_idx)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = AstromerFeedForward(config)
        self.output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        if config.use_residual_projection:
            self.attention_residual = nn.Linear(config.hidden_size, config.hidden_size)
            self.ffn_residual = nn.Linear(config.hidden_size, config.hidden_size)
        else:
            self.attention_residual = None
            self.ffn_residual = None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        """`(B, L, D)` -> `(B, L, D)`."""
        attended, _ = self.attention(hidden_states, attention_mask, **kwargs)
        attended = self.dropout(attended)
        if self.attention_residual is not None:
            attended = attended + self.attention_residual(hidden_states)
        hidden_states = self.attention_norm(attended)

        mixed = self.dropout(self.ffn(hidden_states))
        if self.ffn_residual is not None:
            mixed = mixed + self.ffn_residual(hidden_states)
        return self.output_norm(mixed)


class AstromerReconstructionHead(nn.Module):
    """`y_hat = Dense_{D->1}(LayerNorm(h))` at every position (the checkpoint's `bn_0` is a LayerNorm)."""

    def __init__(self, config: AstromerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.proj = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(B, L, D)` -> `(B, L)`."""
        return self.proj(self.norm(hidden_states)).squeeze(-1)


# ----------------------------------------------------------------------------------------------------------------
# Pretrained base and the encoder
# ----------------------------------------------------------------------------------------------------------------
@auto_docstring
class AstromerPreTrainedModel(PreTrainedModel):
    config: AstromerConfig
    base_model_prefix = "astromer"
    main_input_name = "magnitudes"
    input_modalities = ("time",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["AstromerLayer"]
    _supports_sdpa = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": AstromerLayer, "attentions": AstromerAttention}
    # Released checkpoints carry the pretraining head; the encoder and the classifier load them without it.
    _keys_to_ignore_on_load_unexpected = [r"^reconstruction_head\."]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As [`PreTrainedModel.from_pretrained`]; a bundled model name (`"astromer1-macho"`) loads its folder."""
        return super().from_pretrained(resolve_bundled_name(pretrained_model_name_or_path), *args, **kwargs)

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        """Two full windows of a seeded sinusoid: `magnitudes`, `times` and `attention_mask`, each `(2, window_size)`.

        The inherited default is a batch of `input_ids`, which an Astromer model does not take.
        """
        length = self.config.window_size
        times = torch.linspace(0.0, 100.0, length).repeat(2, 1)
        magnitudes = 0.3 * torch.sin(2 * torch.pi * times / torch.tensor([[0.57], [13.2]]))
        return {
            "magnitudes": magnitudes - magnitudes.mean(dim=1, keepdim=True),
            "times": times - times.mean(dim=1, keepdim=True),
            "attention_mask": torch.ones(2, length, dtype=torch.long),
        }

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, AstromerEmbeddings):
            init.copy_(
                module.time_frequencies,
                astromer_time_frequencies(self.config.hidden_size, self.config.time_encoding_base),
            )
            if self.config.use_mask_token:
                init.zeros_(module.mask_token)
        elif isinstance(module, AstromerForSequenceClassification):
            init.constant_(module.layer_logits, 1.0 / module.layer_logits.numel())


def _squeeze_channel(tensor: torch.Tensor | None, name: str) -> torch.Tensor | None:
    """Accept TensorFlow's `(B, L, 1)` layout as well as `(B, L)`."""
    if tensor is None:
        return None
    if tensor.dim() == 3 and tensor.shape[-1] == 1:
        tensor = tensor.squeeze(-1)
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2:
        raise ValueError(f"`{name}` must have shape (batch, length) or (batch, length, 1), got {tuple(tensor.shape)}")
    return tensor


def _window_inputs(
    magnitudes: torch.Tensor, times: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(B, L)` magnitudes, times and attention mask (all observed when `attention_mask` is None)."""
    magnitudes = _squeeze_channel(magnitudes, "magnitudes")
    times = _squeeze_channel(times, "times")
    attention_mask = _squeeze_channel(attention_mask, "attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(magnitudes, dtype=torch.long)
    return magnitudes, times, attention_mask


@auto_docstring
class AstromerModel(AstromerPreTrainedModel):
    """The Astromer encoder: input embedding, then `num_hidden_layers` post-LN attention blocks (no final norm)."""

    def __init__(self, config: AstromerConfig):
        super().__init__(config)
        self.embeddings = AstromerEmbeddings(config)
        self.embedding_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList([AstromerLayer(config, i) for i in range(config.num_hidden_layers)])
        self.post_init()

    def _check_inputs(
        self,
        magnitudes: torch.Tensor,
        times: torch.Tensor,
        attention_mask: torch.Tensor,
        mask_positions: torch.Tensor | None,
        cu_seqlens: torch.Tensor | None,
    ) -> None:
        if times.shape != magnitudes.shape:
            raise ValueError(
                f"`times` {tuple(times.shape)} and `magnitudes` {tuple(magnitudes.shape)} must have the same shape"
            )
        if attention_mask.shape != magnitudes.shape:
            raise ValueError(
                f"`attention_mask` {tuple(attention_mask.shape)} must match `magnitudes` {tuple(magnitudes.shape)}"
            )
        if mask_positions is not None and mask_positions.shape != magnitudes.shape:
            raise ValueError(
                f"`mask_positions` {tuple(mask_positions.shape)} must match `magnitudes` {tuple(magnitudes.shape)}"
            )
        if not magnitudes.is_floating_point() or not times.is_floating_point():
            raise TypeError("`magnitudes` and `times` must be floating-point tensors")
        if torch.compiler.is_compiling():
            return
        if not bool(torch.isfinite(magnitudes).all()) or not bool(torch.isfinite(times).all()):
            raise ValueError("`magnitudes` and `times` must be finite (clean light curves with AstromerFeatureExtractor)")
        if cu_seqlens is None:
            visible = attention_mask.bool() if mask_positions is None else attention_mask.bool() & ~mask_positions.bool()
            empty = (~visible.any(dim=-1)).nonzero().flatten()
            if empty.numel() > 0:
                raise ValueError(
                    f"window(s) {empty.tolist()[:10]} have no visible observation (attention_mask * (1 - "
                    "mask_positions) is all zero): every window needs at least one observed, unmasked point"
                )
        elif magnitudes.shape[0] != 1:
            raise ValueError(f"packed inputs (with `cu_seqlens`) must have batch size 1, got {magnitudes.shape[0]}")

    def _attention_mask_and_kwargs(
        self,
        embeddings: torch.Tensor,
        hidden: torch.Tensor,
        cu_seqlens: torch.Tensor | None,
        max_seqlen: int | None,
    ) -> tuple[torch.Tensor | None, dict]:
        """The mask and keyword arguments of the attention function, from `hidden` `(B, L)` bool (TF `mask_in`:
        True = hidden key).

        The mask comes from the mask builder registered for `config._attn_implementation`: sdpa and eager get a
        dense `(B, 1, L, L)` mask (block-diagonal for packed inputs, O(T^2) memory: for tests and small batches),
        implementations registered with a compact key mask get that. Packed inputs also pass `cu_seq_lens_q`,
        `max_length_q` and `key_bias` (`config.mask_bias` on hidden keys, finite so that a window whose keys are all
        hidden still gets finite outputs) to whichever implementation consumes them.
        """
        if self.config.attention_bias_mode == "a1_query_key_bias":
            if cu_seqlens is not None:
                raise ValueError(
                    "Astromer 1 (attention_bias_mode='a1_query_key_bias') cannot run on packed sequences: its "
                    "+1*min(1, m_q + m_k) term attends to padding, so its outputs depend on the padded layout. Pad "
                    "every window to 200 observations instead"
                )
            hidden_f = hidden.to(embeddings.dtype)
            bias = torch.clamp(hidden_f[:, :, None] + hidden_f[:, None, :], max=1.0)
            return bias.unsqueeze(1), {}

        key_visible = ~hidden
        if cu_seqlens is None:
            return create_bidirectional_mask(self.config, embeddings, key_visible), {}

        if max_seqlen is None:
            max_seqlen = packed_max_seqlen(cu_seqlens, embeddings.shape[1])
        mask = create_bidirectional_mask(
            self.config, embeddings, key_visible,
            and_mask_function=within_packed_sequence(cu_seqlens, embeddings.shape[1]),
        )
        key_bias = hidden[0].to(torch.float32) * float(self.config.mask_bias)
        return mask, {"cu_seq_lens_q": cu_seqlens, "max_length_q": max_seqlen, "key_bias": key_bias}

    @merge_with_config_defaults
    @capture_outputs
    @auto_docstring
    def forward(
        self,
        magnitudes: torch.Tensor,
        times: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_positions: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        r"""
        magnitudes (`torch.FloatTensor` of shape `(batch_size, length)`):
            Magnitudes centred per window (subtract the window mean over observed points), 0 at padding. Use
            [`AstromerFeatureExtractor`] to build them. `(batch_size, length, 1)` is accepted too.
        times (`torch.FloatTensor` of shape `(batch_size, length)`):
            Observation times in days, centred per window; 0 at padding.
        attention_mask (`torch.LongTensor` of shape `(batch_size, length)`, *optional*):
            1 for observed points, 0 for padding. Defaults to all observed.
        mask_positions (`torch.LongTensor` of shape `(batch_size, length)`, *optional*):
            1 for probed "masked" positions of the pretraining task: hidden from the other positions as keys and, with
            `config.use_mask_token`, replaced by the MASK token. The released Astromer 2 applies no token, so a masked
            position still sees its own value.
        cu_seqlens (`torch.IntTensor` of shape `(n_windows + 1,)`, *optional*):
            Packed mode: `magnitudes`/`times` hold all windows back to back as `(1, total_tokens)` and `cu_seqlens`
            gives their boundaries. Attention is block-diagonal: implementations that take packed inputs
            (`cu_seq_lens_q`) attend within each window directly, eager and sdpa get a dense block-diagonal mask
            (O(T^2) memory). Not available for Astromer 1.
        max_seqlen (`int`, *optional*):
            Longest window in a packed batch, or a bound on it (computed from `cu_seqlens` when omitted; under
            `torch.compile` the total number of tokens is taken instead, so give the window size for speed).
        """
        magnitudes, times, attention_mask = _window_inputs(magnitudes, times, attention_mask)
        mask_positions = _squeeze_channel(mask_positions, "mask_positions")
        self._check_inputs(magnitudes, times, attention_mask, mask_positions, cu_seqlens)

        hidden = ~attention_mask.bool()
        if mask_positions is not None:
            hidden = hidden | mask_positions.bool()

        embeddings = self.embeddings(magnitudes, times, hidden if mask_positions is not None else None)
        mask, attention_kwargs = self._attention_mask_and_kwargs(embeddings, hidden, cu_seqlens, max_seqlen)
        hidden_states = self.embedding_dropout(embeddings)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, **attention_kwargs, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)

    def embed(
        self,
        magnitudes: torch.Tensor,
        times: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pooling: str = "skip",
        layer_logits: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> torch.Tensor:
        """One embedding vector per window, `(B, D)` (or `(n_windows, D)` for packed inputs).

        Pooling, always over observed points only (padding excluded):
        - `"skip"`: the paper's gamma-weighted skip embedding `mean_k(softmax(g)_k * mean_t Z_k)` over the input
          embedding Z_0 (Astromer 2; omitted for Astromer 1) and every block output; `g` defaults to its
          initial value (equal weights) unless a fine-tuned `layer_logits` is given;
        - `"mean"`: masked mean of the last block (light-curve's ONNX `mean`; the "Donoso 2023" baseline);
        - `"max"`: masked maximum of the last block.
        To get one vector per light curve, average the window vectors of each curve (see
        `AstromerFeatureExtractor`'s `light_curve_index` and `pool_windows`).
        """
        magnitudes, times, attention_mask = _window_inputs(magnitudes, times, attention_mask)
        outputs = self(
            magnitudes=magnitudes,
            times=times,
            attention_mask=attention_mask,
            cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen,
            output_hidden_states=pooling == "skip",
        )
        if pooling == "mean":
            return masked_mean(outputs.last_hidden_state, attention_mask, cu_seqlens)
        if pooling == "max":
            return masked_max(outputs.last_hidden_state, attention_mask, cu_seqlens)
        if pooling != "skip":
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        means = self.layer_means(outputs.hidden_states, magnitudes, times, attention_mask, cu_seqlens,
                                 inputs_had_mask_positions=False)
        if layer_logits is None:
            layer_logits = means.new_full((means.shape[1],), 1.0 / means.shape[1])
        return skip_embedding(means, layer_logits)

    def layer_means(
        self,
        hidden_states: tuple[torch.Tensor, ...],
        magnitudes: torch.Tensor,
        times: torch.Tensor,
        attention_mask: torch.Tensor,
        cu_seqlens: torch.Tensor | None = None,
        inputs_had_mask_positions: bool = True,
    ) -> torch.Tensor:
        """`(B, K, D)` masked means of the layers used by the skip embedding.

        Z_0 is the input embedding without dropout and without the MASK token (the official classifier input): taken
        from `hidden_states[0]` when the forward that gave them had no `mask_positions` and no active dropout
        (`inputs_had_mask_positions=False`, as in `embed`), recomputed otherwise. The block outputs come from
        `hidden_states[1:]`. Astromer 1's skip embedding uses the block outputs only.
        """
        blocks = list(hidden_states[1:])
        if self.config.attention_bias_mode != "a1_query_key_bias":
            if not inputs_had_mask_positions and not (self.training and self.embedding_dropout.p > 0):
                blocks.insert(0, hidden_states[0])
            else:
                magnitudes, times, _ = _window_inputs(magnitudes, times, attention_mask)
                blocks.insert(0, self.embeddings(magnitudes, times))
        return torch.stack([masked_mean(z, attention_mask, cu_seqlens) for z in blocks], dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class AstromerMaskedReconstructionOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        The official (uncertainty-weighted, when weights or errors are given) masked RMSE.
    reconstruction (`torch.FloatTensor` of shape `(batch_size, length)`):
        Predicted centred magnitude at every position.
    r2 (`torch.FloatTensor` of shape `()`, *optional*):
        The official R^2 over the loss positions of the batch.
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, length, hidden_size)`):
        Output of the last block.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        Input embedding (after dropout) and every block output, each `(batch_size, length, hidden_size)`.
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        Attention probabilities per block (eager attention only).
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    r2: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@auto_docstring(custom_intro="Astromer with its masked-magnitude reconstruction head (the pretraining task).")
class AstromerForMaskedReconstruction(AstromerPreTrainedModel):
    def __init__(self, config: AstromerConfig):
        super().__init__(config)
        self.astromer = AstromerModel(config)
        self.reconstruction_head = AstromerReconstructionHead(config)
        self.post_init()

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        magnitudes: torch.Tensor,
        times: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_positions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        loss_weights: torch.Tensor | None = None,
        errors: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> AstromerMaskedReconstructionOutput:
        r"""
        magnitudes (`torch.FloatTensor` of shape `(batch_size, length)`):
            Centred input magnitudes (with the pretraining task's "random" replacements applied).
        times (`torch.FloatTensor` of shape `(batch_size, length)`):
            Centred times in days.
        attention_mask (`torch.LongTensor` of shape `(batch_size, length)`, *optional*):
            1 for observed points, 0 for padding.
        mask_positions (`torch.LongTensor` of shape `(batch_size, length)`, *optional*):
            1 for probed "masked" positions (hidden keys; MASK token with `config.use_mask_token`).
        labels (`torch.FloatTensor` of shape `(batch_size, length)`, *optional*):
            True centred magnitudes. When given, `loss` and `r2` are returned.
        loss_mask (`torch.FloatTensor` of shape `(batch_size, length)`, *optional*):
            1 at probed positions (masked + random + same). Defaults to `attention_mask` (every observed point).
        loss_weights (`torch.FloatTensor` of shape `(batch_size, length)`, *optional*):
            The official uncertainty weights (see [`compute_loss_weights`]). Computed from `errors` when only those
            are given; without either the loss is unweighted. Ignored when `config.use_loss_weights` is False.
        errors (`torch.FloatTensor` of shape `(batch_size, length)`, *optional*):
            Original (not centred) magnitude uncertainties, used only for the loss weights.
        cu_seqlens (`torch.IntTensor` of shape `(n_windows + 1,)`, *optional*):
            Packed mode (see [`AstromerModel.forward`]); all per-position tensors are then `(1, total_tokens)`.
        max_seqlen (`int`, *optional*):
            Longest window of a packed batch.
        """
        attention_mask = _squeeze_channel(attention_mask, "attention_mask")
        outputs = self.astromer(
            magnitudes=magnitudes,
            times=times,
            attention_mask=attention_mask,
            mask_positions=mask_positions,
            cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen,
            **kwargs,
        )
        reconstruction = self.reconstruction_head(outputs.last_hidden_state)

        loss = r2 = None
        if labels is not None:
            # the loss is computed in at least fp32: under bf16 autocast, rounding the targets and the loss to bf16
            # would cost about one part in 300 of every magnitude and of the loss itself
            loss_dtype = torch.promote_types(reconstruction.dtype, torch.float32)
            prediction = reconstruction.to(loss_dtype)
            labels = _squeeze_channel(labels, "labels").to(loss_dtype)
            if attention_mask is None:
                attention_mask = torch.ones_like(labels, dtype=torch.long)
            loss_mask = attention_mask if loss_mask is None else _squeeze_channel(loss_mask, "loss_mask")
            loss_mask = loss_mask.to(loss_dtype)
            weights = None
            if self.config.use_loss_weights:
                if loss_weights is not None:
                    weights = _squeeze_channel(loss_weights, "loss_weights").to(loss_dtype)
                elif errors is not None:
                    if cu_seqlens is not None:
                        raise ValueError("packed inputs need precomputed `loss_weights` (the packing collator adds them)")
                    weights = compute_loss_weights(_squeeze_channel(errors, "errors"), attention_mask)
                    weights = weights.to(loss_dtype)
            loss = masked_rmse_loss(prediction, labels, loss_mask, weights, cu_seqlens, attention_mask)
            r2 = masked_r2_score(prediction.detach(), labels, loss_mask, cu_seqlens)

        return AstromerMaskedReconstructionOutput(
            loss=loss,
            reconstruction=reconstruction,
            r2=r2,
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


@dataclass
class AstromerSequenceClassifierOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        Cross-entropy of the logits against `labels`.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Per-window class scores.
    embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The pooled window embedding fed to the MLP (the gamma-weighted skip embedding by default).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        Encoder hidden states.
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        Attention probabilities per block (eager attention only).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class AstromerClassificationHead(nn.Module):
    """`Dense_n(LN_{eps=1e-3}(ReLU(D256(ReLU(D512(ReLU(D1024(E))))))))` (the paper's skip/gamma MLP)."""

    def __init__(self, config: AstromerConfig):
        super().__init__()
        widths = [config.hidden_size, *config.classifier_hidden_sizes]
        self.dense_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.norm = nn.LayerNorm(widths[-1], eps=config.classifier_layer_norm_eps)
        self.out_proj = nn.Linear(widths[-1], config.num_labels)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """`(B, D)` -> `(B, num_labels)`."""
        hidden = embeddings
        for layer in self.dense_layers:
            hidden = torch.relu(layer(hidden))
        return self.out_proj(self.norm(hidden))


@auto_docstring(custom_intro="Astromer with the paper's window classifier (gamma-weighted skip embedding + MLP).")
class AstromerForSequenceClassification(AstromerPreTrainedModel):
    def __init__(self, config: AstromerConfig):
        super().__init__(config)
        self.astromer = AstromerModel(config)
        n_terms = config.num_hidden_layers + int(config.attention_bias_mode != "a1_query_key_bias")
        self.layer_logits = nn.Parameter(torch.full((n_terms,), 1.0 / n_terms))
        self.classifier = AstromerClassificationHead(config)
        self.post_init()
        if config.freeze_encoder:
            self.freeze_encoder()

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the encoder; a frozen encoder also runs in eval mode (no dropout)."""
        self.config.freeze_encoder = frozen
        self.astromer.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_encoder:
            self.astromer.eval()
        return self

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        magnitudes: torch.Tensor,
        times: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> AstromerSequenceClassifierOutput:
        r"""
        magnitudes (`torch.FloatTensor` of shape `(batch_size, length)`):
            Centred magnitudes of each window.
        times (`torch.FloatTensor` of shape `(batch_size, length)`):
            Centred times in days.
        attention_mask (`torch.LongTensor` of shape `(batch_size, length)`, *optional*):
            1 for observed points, 0 for padding.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class index of each window; gives the cross-entropy `loss`.
        cu_seqlens (`torch.IntTensor` of shape `(n_windows + 1,)`, *optional*):
            Packed mode (see [`AstromerModel.forward`]); then `batch_size` below means `n_windows`.
        max_seqlen (`int`, *optional*):
            Longest window of a packed batch.
        """
        magnitudes, times, attention_mask = _window_inputs(magnitudes, times, attention_mask)
        pooling = self.config.classifier_pooling
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
            outputs = self.astromer(
                magnitudes=magnitudes,
                times=times,
                attention_mask=attention_mask,
                cu_seqlens=cu_seqlens,
                max_seqlen=max_seqlen,
                output_hidden_states=True if pooling == "skip" else kwargs.pop("output_hidden_states", None),
                **kwargs,
            )
            if pooling == "skip":
                means = self.astromer.layer_means(outputs.hidden_states, magnitudes, times, attention_mask,
                                                  cu_seqlens, inputs_had_mask_positions=False)
            elif pooling == "mean":
                pooled = masked_mean(outputs.last_hidden_state, attention_mask, cu_seqlens)
            else:
                pooled = masked_max(outputs.last_hidden_state, attention_mask, cu_seqlens)
        embeddings = skip_embedding(means, self.layer_logits) if pooling == "skip" else pooled
        logits = self.classifier(embeddings)

        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.to(logits.device).long().view(-1))
        return AstromerSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            embeddings=embeddings,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "AstromerPreTrainedModel",
    "AstromerModel",
    "AstromerForMaskedReconstruction",
    "AstromerForSequenceClassification",
    "compute_loss_weights",
]

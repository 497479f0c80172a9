"""Astromer configuration."""

import os
from pathlib import Path

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

ATTENTION_BIAS_MODES = ("key_mask", "a1_query_key_bias")
#: How a window becomes one vector: the paper's gamma-weighted "skip" embedding, or the masked "mean" / "max" of
#: the last block (the model's ``embed``, the classifier input and the pipeline all take these names).
POOLING_MODES = ("skip", "mean", "max")
#: Converted released weights installed with the `astromer` package, one folder per name (e.g. `astromer1-macho`).
#: A copy of this file downloaded as Hub remote code has no such folder, and names resolve to themselves.
BUNDLED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def resolve_bundled_name(name_or_path: str | os.PathLike) -> str | os.PathLike:
    """The installed folder of a bundled model name such as `"astromer1-macho"`; anything else unchanged.

    A bare name is not a Hub repository id the Hub serves (those are `owner/name`), so without this mapping
    `from_pretrained("astromer1-macho")` would retry the network and fail. An existing local path always wins.
    """
    if isinstance(name_or_path, str) and "/" not in name_or_path and not os.path.exists(name_or_path):
        folder = BUNDLED_WEIGHTS_DIR / name_or_path
        if (folder / "config.json").is_file():
            return str(folder)
    return name_or_path


@strict
class AstromerConfig(PreTrainedConfig):
    r"""
    Configuration of an Astromer light-curve encoder (Astromer 2, and the Astromer 1 variant).

    Two presets reproduce the published models:

    - [`AstromerConfig.astromer2`]: the released Astromer 2 (6 blocks, 4 heads of 64, d=256, tanh FFN of width 512,
      projected "leak" residuals, post-LayerNorm with eps 1e-6, key masking with bias -1e9, 200-observation windows)
      **without a MASK token**, which is what the official TensorFlow model computes (Keras silently drops its token
      layer). Pass `use_mask_token=True` for new pretraining runs: that is the paper's intended trainable token.
    - [`AstromerConfig.astromer1`]: the 2021 Astromer 1 weights (2 blocks, FFN 128, no residuals, and the A1
      `+1 * min(1, m_q + m_k)` attention term that is added instead of a mask).

    Args:
        hidden_size (`int`, defaults to 256): width of the token embeddings (d_model, also the time-encoding width).
        num_hidden_layers (`int`, defaults to 6): number of attention blocks.
        num_attention_heads (`int`, defaults to 4): heads per block; head width is `hidden_size / num_attention_heads`.
        intermediate_size (`int`, defaults to 512): width F of the feed-forward ("mixer") layer.
        hidden_act (`str`, defaults to `"tanh"`): activation of the first feed-forward layer.
        use_residual_projection (`bool`, defaults to `True`): add the projected "leak" residuals (Dense d->d) around
            attention and feed-forward (Astromer 2). `False` gives Astromer 1's residual-free blocks.
        hidden_dropout_prob (`float`, defaults to 0.1): dropout on the input embedding, the attention output and the
            feed-forward output (never on attention probabilities).
        layer_norm_eps (`float`, defaults to 1e-6): epsilon of the encoder and reconstruction-head LayerNorms.
        window_size (`int`, defaults to 200): observations per window.
        time_encoding_base (`float`, defaults to 10000.0): base of the time encoding, `omega_i = base^(-2i/d)`.
        use_mask_token (`bool`, defaults to `False`): substitute a trainable scalar (initialised to 0) for the
            magnitude at every hidden position of the pretraining input. Off in the faithful presets.
        attention_bias_mode (`str`, defaults to `"key_mask"`): `"key_mask"` (A2: hidden keys get `mask_bias`) or
            `"a1_query_key_bias"` (A1: `+1 * min(1, m_q + m_k)` added to the scores; depends on padding).
        mask_bias (`float`, defaults to -1e9): additive score bias of hidden keys in `"key_mask"` mode.
        probed_fraction (`float`, defaults to 0.5): share of a window's observations probed by the pretraining task.
        random_fraction (`float`, defaults to 0.2): share of the probed-but-not-"same" positions given a random value.
        same_fraction (`float`, defaults to 0.2): share of probed positions that keep their value and stay visible.
        use_loss_weights (`bool`, defaults to `True`): weight the masked RMSE with the official uncertainty weights.
        classifier_hidden_sizes (`list[int]`, defaults to `[1024, 512, 256]`): ReLU MLP widths of the classifier.
        classifier_layer_norm_eps (`float`, defaults to 1e-3): eps of the classifier LayerNorm (Keras' default).
        classifier_pooling (`str`, defaults to `"skip"`): embedding fed to the classifier: `"skip"` (the paper's
            gamma-weighted mean of every layer's masked mean), `"mean"` or `"max"` (masked pooling of the last block).
        freeze_encoder (`bool`, defaults to `True`): train only the classification head (the paper's protocol).
        initializer_range (`float`, defaults to 0.02): std of the normal initialiser of linear layers.

    Example:

    ```python
    >>> from modeling_astromer import AstromerConfig, AstromerModel
    >>> model = AstromerModel(AstromerConfig.astromer2())
    ```
    """

    model_type = "astromer"

    hidden_size: int = 256
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    intermediate_size: int = 512
    hidden_act: str = "tanh"
    use_residual_projection: bool = True
    hidden_dropout_prob: float | int = 0.1
    layer_norm_eps: float = 1e-6
    window_size: int = 200
    time_encoding_base: float | int = 10000.0
    use_mask_token: bool = False
    attention_bias_mode: str = "key_mask"
    mask_bias: float | int = -1e9
    probed_fraction: float | int = 0.5
    random_fraction: float | int = 0.2
    same_fraction: float | int = 0.2
    use_loss_weights: bool = True
    classifier_hidden_sizes: list[int] | tuple[int, ...] = (1024, 512, 256)
    classifier_layer_norm_eps: float = 1e-3
    classifier_pooling: str = "skip"
    freeze_encoder: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.classifier_hidden_sizes = list(self.classifier_hidden_sizes)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Rejects combinations the Astromer code cannot run, with a message that says what to change."""
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_size % 2 != 0:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be even for the sin/cos time encoding")
        for name in ("num_hidden_layers", "num_attention_heads", "intermediate_size", "window_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.attention_bias_mode not in ATTENTION_BIAS_MODES:
            raise ValueError(
                f"attention_bias_mode must be one of {ATTENTION_BIAS_MODES}, got {self.attention_bias_mode!r}"
            )
        if self.attention_bias_mode == "key_mask" and not self.mask_bias < 0:
            raise ValueError(f"mask_bias must be negative to hide keys, got {self.mask_bias}")
        if self.attention_bias_mode == "a1_query_key_bias" and self.use_mask_token:
            raise ValueError(
                "use_mask_token=True cannot be combined with attention_bias_mode='a1_query_key_bias': Astromer 1 "
                "never had a MASK token and its +1 bias does not hide anything; use 'key_mask' for new pretraining"
            )
        if not 0.0 <= self.hidden_dropout_prob < 1.0:
            raise ValueError(f"hidden_dropout_prob must be in [0, 1), got {self.hidden_dropout_prob}")
        if not 0.0 < self.probed_fraction <= 1.0:
            raise ValueError(f"probed_fraction must be in (0, 1], got {self.probed_fraction}")
        for name in ("random_fraction", "same_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.random_fraction + self.same_fraction > 1.0:
            raise ValueError(
                f"random_fraction + same_fraction must not exceed 1 (got {self.random_fraction} + "
                f"{self.same_fraction}): no probed position would be left to mask"
            )
        if self.classifier_pooling not in POOLING_MODES:
            raise ValueError(f"classifier_pooling must be one of {POOLING_MODES}, got {self.classifier_pooling!r}")
        if any(width < 1 for width in self.classifier_hidden_sizes):
            raise ValueError(f"classifier_hidden_sizes must be positive, got {self.classifier_hidden_sizes}")
        if self.layer_norm_eps <= 0 or self.classifier_layer_norm_eps <= 0:
            raise ValueError("layer norm epsilons must be positive")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def astromer2(cls, **overrides) -> "AstromerConfig":
        """The released Astromer 2 architecture (3,953,409 parameters without the MASK token)."""
        preset = dict(
            hidden_size=256,
            num_hidden_layers=6,
            num_attention_heads=4,
            intermediate_size=512,
            hidden_act="tanh",
            use_residual_projection=True,
            layer_norm_eps=1e-6,
            window_size=200,
            use_mask_token=False,
            attention_bias_mode="key_mask",
            mask_bias=-1e9,
        )
        preset.update(overrides)
        return cls(**preset)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs) -> "AstromerConfig":
        """As [`PreTrainedConfig.from_pretrained`]; a bundled model name (`"astromer1-macho"`) loads its folder."""
        return super().from_pretrained(resolve_bundled_name(pretrained_model_name_or_path), *args, **kwargs)

    @classmethod
    def astromer1(cls, **overrides) -> "AstromerConfig":
        """The 2021 Astromer 1 weights (661,505 parameters). Its outputs depend on padding: always pad to 200."""
        preset = dict(
            hidden_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            hidden_act="tanh",
            use_residual_projection=False,
            hidden_dropout_prob=0.1,
            layer_norm_eps=1e-6,
            window_size=200,
            use_mask_token=False,
            attention_bias_mode="a1_query_key_bias",
            classifier_pooling="skip",
        )
        preset.update(overrides)
        return cls(**preset)


__all__ = ["AstromerConfig", "resolve_bundled_name"]

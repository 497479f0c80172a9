"""The attention implementation is chosen once: one registry maps names to code, the model names no kernel, a forced
choice runs what was asked for (or its documented fallback, announced once), and Triton is imported only when its
kernel runs."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from curve_factories import synthetic_windows
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, create_bidirectional_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import modeling_astromer.modeling_astromer as modeling
from astromer_kernels import AttentionFallbackWarning, hf_functions, registry
from astromer_kernels.attention import ops
from modeling_astromer import AstromerConfig, AstromerForMaskedReconstruction, AstromerMaskingCollator
from modeling_astromer.packing import AstromerPackingCollator

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "modeling_astromer", "hub_datasets", "train", "astromer_app")
needs_kernel = pytest.mark.skipif(not ops.kernel_available(torch.device("cpu"), torch.float32),
                                  reason="Triton interpreter not available")


def batches(lengths=(40, 9, 25), seed=0):
    padded = AstromerMaskingCollator(seed=seed)(synthetic_windows(lengths, seed))
    packed = AstromerPackingCollator(max_seqlen=64)(padded)
    drop = ("errors", "sequence_index")
    return ({k: v for k, v in padded.items() if k not in drop}, {k: v for k, v in packed.items() if k not in drop})


def model_for(implementation, num_hidden_layers=2, **overrides):
    config = AstromerConfig.astromer2(hidden_dropout_prob=0.0, num_hidden_layers=num_hidden_layers, **overrides)
    config._attn_implementation = implementation
    torch.manual_seed(0)
    return AstromerForMaskedReconstruction(config).eval()


def run_python(code: str, interpret: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)


# ------------------------------------------------------------------------------------------------- registry
def test_registry_is_the_table_of_names():
    names = [implementation.name for implementation in registry.ATTENTION_IMPLEMENTATIONS]
    assert registry.packed_attention_implementations() == tuple(names) == ("astromer_varlen", "astromer_blocked")
    registry.register_attention_implementations()
    registry.register_attention_implementations()  # idempotent
    for implementation in registry.ATTENTION_IMPLEMENTATIONS:
        assert AttentionInterface._global_mapping[implementation.name] is implementation.attention
        # what the model's attention layer looks up
        assert ALL_ATTENTION_FUNCTIONS.get_interface(implementation.name, None) is implementation.attention
        assert AttentionMaskInterface._global_mapping[implementation.name] is implementation.mask
        assert implementation.mask is hf_functions.key_only_mask


def test_only_the_registry_registers_attention_names():
    registering = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Attribute) and node.attr == "register"
                        and getattr(node.value, "id", None) in ("AttentionInterface", "AttentionMaskInterface")):
                    registering.add(str(path.relative_to(REPO)))
    assert registering == {"kernels/registry.py"}


def test_modeling_file_names_no_attention_implementation():
    source = Path(modeling.__file__).read_text()
    for name in registry.packed_attention_implementations():
        assert name not in source
    for kernel_word in ("triton", "astromer_kernels"):
        assert kernel_word not in source.lower(), kernel_word


RECORD_TRITON_IMPORTS = """
import builtins
import sys
import warnings

import torch

project_importers = []
real_import = builtins.__import__


def recording_import(name, globals=None, *args, **kwargs):
    importer = (globals or {}).get("__name__", "")
    if name.split(".")[0] == "triton" and importer.split(".")[0] in {package}:
        project_importers.append(importer)
    return real_import(name, globals, *args, **kwargs)


builtins.__import__ = recording_import
import modeling_astromer  # noqa: E402
from astromer_kernels import AttentionFallbackWarning  # noqa: E402


def forward(implementation, packed):
    config = modeling_astromer.AstromerConfig.astromer2(num_hidden_layers=1)
    config._attn_implementation = implementation
    model = modeling_astromer.AstromerModel(config).eval()
    magnitudes, times = torch.randn(1, 30), torch.randn(1, 30).cumsum(1)
    cu = torch.tensor([0, 12, 30], dtype=torch.int32) if packed else None
    with torch.no_grad():
        return model(magnitudes, times, cu_seqlens=cu).last_hidden_state
""".replace("{package}", repr({"astromer_kernels", "modeling_astromer", "hub_datasets", "astromer_train"}))


@pytest.mark.parametrize("interpret", [False, True])
def test_triton_is_imported_only_when_its_kernel_runs(interpret):
    """Importing the model registers the implementations without importing Triton, and so does running
    astromer_blocked; astromer_varlen imports it when its kernel can run (here: under the interpreter), and its CPU
    fallback never does. (transformers imports torch._dynamo, which imports an installed Triton by itself: this test
    records the imports made by this project's modules.)"""
    proc = run_python(RECORD_TRITON_IMPORTS + textwrap.dedent(
        """
        assert not project_importers, project_importers
        forward("astromer_blocked", packed=False)
        forward("astromer_blocked", packed=True)
        assert not project_importers, project_importers
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            forward("astromer_varlen", packed=True)
        print(sorted(set(project_importers)), len([w for w in caught if w.category is AttentionFallbackWarning]))
        """), interpret)
    assert proc.returncode == 0, proc.stderr[-3000:]
    importers, warned = proc.stdout.strip().rsplit(" ", 1)
    if interpret:
        assert (importers, warned) == ("['astromer_kernels.attention.triton_varlen']", "0")
    else:
        assert (importers, warned) == ("[]", "1")


def test_everything_runs_without_triton():
    """Triton is optional: without it, astromer_varlen runs its fallback and says that Triton is missing."""
    block_triton = textwrap.dedent(
        """
        import sys


        class NoTriton:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "triton":
                    raise ModuleNotFoundError(f"No module named {name!r}")
                return None


        sys.meta_path.insert(0, NoTriton())
        """)
    check = textwrap.dedent(
        """
        forward("astromer_blocked", packed=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            forward("astromer_varlen", packed=True)
        messages = [str(w.message) for w in caught if w.category is AttentionFallbackWarning]
        assert len(messages) == 1 and "Triton is not installed" in messages[0], messages
        assert "triton" not in sys.modules
        print("NO_TRITON_OK")
        """)
    proc = run_python(block_triton + RECORD_TRITON_IMPORTS + check, interpret=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NO_TRITON_OK" in proc.stdout


# ------------------------------------------------------------------------------------------------- masks
def test_key_only_mask_is_compact():
    config = model_for("astromer_blocked").config
    visible = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)
    mask = create_bidirectional_mask(config, torch.zeros(2, 4, 8), visible)
    assert mask.dtype == torch.bool and mask.shape == (2, 1, 1, 4)
    assert torch.equal(mask[:, 0, 0], visible)
    assert create_bidirectional_mask(config, torch.zeros(2, 4, 8), None) is None
    # a padding mask shorter than the keys hides the keys it does not cover
    short = hf_functions.key_only_mask(batch_size=2, q_length=6, kv_length=6, attention_mask=visible)
    assert short.shape == (2, 1, 1, 6) and not short[:, 0, 0, 4:].any()


@pytest.mark.parametrize("implementation", ["sdpa", "eager", "astromer_blocked"])
def test_packed_masks(implementation):
    """sdpa/eager get the dense block-diagonal mask of today; this project's implementations a (1, 1, 1, T) one."""
    _, packed = batches()
    model = model_for(implementation)
    hidden = ~packed["attention_mask"].bool() | packed["mask_positions"].bool()
    embeddings = torch.zeros(1, hidden.shape[1], 8)
    mask, kwargs = model.astromer._attention_mask_and_kwargs(embeddings, hidden, packed["cu_seqlens"], None)
    assert set(kwargs) == {"cu_seq_lens_q", "max_length_q", "key_bias"}
    assert kwargs["max_length_q"] == 40
    torch.testing.assert_close(kwargs["key_bias"], hidden[0].float() * -1e9)
    if implementation.startswith("astromer"):
        assert mask.shape == (1, 1, 1, hidden.shape[1]) and torch.equal(mask[0, 0, 0], ~hidden[0])
        return
    segments = modeling.packed_segment_ids(packed["cu_seqlens"], hidden.shape[1])
    expected = (segments[:, None] == segments[None, :]) & ~hidden[0][None, :]
    allowed = mask if mask.dtype == torch.bool else mask == 0
    assert mask.shape == (1, 1, *expected.shape) and torch.equal(allowed[0, 0], expected)


# ------------------------------------------------------------------------------------------------- choice
class Spy:
    """Wraps a module-level function and counts its calls."""

    def __init__(self, monkeypatch, module, name):
        self.calls = 0
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)


def spies(monkeypatch):
    return {
        "blocked": Spy(monkeypatch, hf_functions, "blocked_attention"),
        "blocked_varlen": Spy(monkeypatch, hf_functions, "blocked_varlen_attention"),
        "varlen": Spy(monkeypatch, hf_functions, "varlen_attention"),
        "triton": Spy(monkeypatch, ops, "_launch_fwd"),
        "fallback": Spy(monkeypatch, ops, "blocked_varlen_attention"),
    }


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_astromer_blocked_runs_blocked_attention(monkeypatch, layout):
    counts = spies(monkeypatch)
    padded, packed = batches()
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttentionFallbackWarning)
        with torch.no_grad():
            model_for("astromer_blocked")(**(padded if layout == "padded" else packed))
    called = {name for name, spy in counts.items() if spy.calls}
    assert called == ({"blocked"} if layout == "padded" else {"blocked_varlen"})
    assert counts["blocked" if layout == "padded" else "blocked_varlen"].calls == 2  # one per layer


@needs_kernel
def test_astromer_varlen_runs_the_triton_kernel_where_it_can(monkeypatch):
    counts = spies(monkeypatch)
    _, packed = batches()
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttentionFallbackWarning)
        with torch.no_grad():
            model_for("astromer_varlen")(**packed)
    assert counts["varlen"].calls == counts["triton"].calls == 2
    assert counts["blocked"].calls == counts["blocked_varlen"].calls == counts["fallback"].calls == 0


def test_astromer_varlen_falls_back_to_blocked_on_cpu_with_one_warning(monkeypatch):
    """Without the interpreter a CPU cannot run the Triton kernel: blocked attention runs, and says so once."""
    monkeypatch.setattr(ops, "INTERPRETING", False)
    monkeypatch.setattr(ops, "_ANNOUNCED_FALLBACKS", set())
    assert not ops.kernel_available(torch.device("cpu"), torch.float32)
    counts = spies(monkeypatch)
    padded, packed = batches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            fallback = model_for("astromer_varlen", num_hidden_layers=3)(**packed)
            model_for("astromer_varlen", num_hidden_layers=3)(**padded)
    announced = [w for w in caught if issubclass(w.category, AttentionFallbackWarning)]
    assert len(announced) == 1, [str(w.message) for w in caught]
    message = str(announced[0].message)
    assert "astromer_varlen" in message and "astromer_blocked" in message and "TRITON_INTERPRET" in message
    assert counts["triton"].calls == 0 and counts["fallback"].calls == 6
    with torch.no_grad():
        blocked = model_for("astromer_blocked", num_hidden_layers=3)(**packed)
    # the fallback is the code astromer_blocked runs on packed inputs: the same numbers, bit for bit
    assert torch.equal(fallback.reconstruction, blocked.reconstruction)


def test_varlen_attention_falls_back_to_padded_sdpa_off_cpu(monkeypatch):
    """Where the kernel cannot run on another device (CUDA without Triton, fp64 on CUDA, ...), padded SDPA runs and
    the warning says why; on a CPU the fallback is blocked attention."""
    monkeypatch.setattr(ops, "_ANNOUNCED_FALLBACKS", set())
    with pytest.warns(AttentionFallbackWarning, match=r"on cuda torch.float64 tensors \(.*\); running padded SDPA"):
        ops._announce_fallback(torch.device("cuda"), torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops._announce_fallback(torch.device("cuda"), torch.float64)  # once


# ------------------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("implementation", [
    "sdpa", "eager", "astromer_blocked", pytest.param("astromer_varlen", marks=needs_kernel),
])
def test_packed_equals_padded(implementation):
    """Every implementation gives packed inputs the outputs and loss of the padded batch."""
    padded, packed = batches((40, 9, 25, 1), seed=2)
    with torch.no_grad():
        reference = model_for(implementation)(**padded)
        result = model_for(implementation)(**packed)
    real = padded["attention_mask"].bool()
    cu = packed["cu_seqlens"].tolist()
    for row, (start, end) in enumerate(zip(cu[:-1], cu[1:])):
        torch.testing.assert_close(result.last_hidden_state[0, start:end],
                                   reference.last_hidden_state[row, real[row]], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(result.loss, reference.loss, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["astromer_blocked", "astromer_varlen"])
def test_astromer1_query_key_bias_needs_eager_or_sdpa(implementation):
    padded, _ = batches()
    config = AstromerConfig.astromer1()
    config._attn_implementation = implementation
    model = AstromerForMaskedReconstruction(config).eval()
    with pytest.raises(ValueError, match="Astromer 1.*attn_implementation='eager' or 'sdpa'"):
        model(**padded)

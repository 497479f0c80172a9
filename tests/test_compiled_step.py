"""The training step under ``torch.compile``: packed batches padded to a fixed token budget compile to one graph
(no graph break, no recompilation across length mixes), and the compiled step equals the eager one.

A 1-block, width-32 model on at most 160 tokens keeps compilation short. ``aot_eager`` checks the graph (the same
Dynamo trace and AOTAutograd forward/backward split as inductor, without code generation); one test compiles with
inductor, the backend ``pretrain --compile`` uses.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch._dynamo
from accelerate.utils import DistributedType
from curve_factories import synthetic_windows
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import astromer_train.pretraining as pretraining
from astromer_kernels.attention import ops
from astromer_train import PretrainingConfig, UsageError, pretrain, run_pretraining
from astromer_train.compiled_loss import CompiledTrainingLoss, eager_training_loss
from astromer_train.data import DeterministicMaskingCollator, WindowDataset
from astromer_train.token_budgets import TokenBudget, choose_token_budgets, window_lengths
from modeling_astromer import AstromerConfig, AstromerForMaskedReconstruction, AstromerMaskingCollator
from modeling_astromer.packing import AstromerPackingCollator

needs_kernel = pytest.mark.skipif(not ops.kernel_available(torch.device("cpu"), torch.float32)
                                  and not torch.cuda.is_available(), reason="Triton kernel backend not available")

#: Five batches with different numbers of windows and lengths; each fits 160 tokens in 8 sequences of <= 64.
LENGTH_MIXES = ([50, 13, 64, 7], [64, 64], [3, 3, 3], [40, 30, 20, 10, 5, 1], [1, 63, 2])
BUDGET = AstromerPackingCollator(max_tokens=160, max_seqlen=64, pad_to_budget=True, max_sequences=8)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def tiny_model(implementation: str) -> AstromerForMaskedReconstruction:
    config = AstromerConfig.astromer2(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                      intermediate_size=64, use_mask_token=True, hidden_dropout_prob=0.0)
    config._attn_implementation = implementation
    torch.manual_seed(0)
    return AstromerForMaskedReconstruction(config).train()


def budget_batches() -> list[dict]:
    batches = []
    for index, lengths in enumerate(LENGTH_MIXES):
        packed = BUDGET(AstromerMaskingCollator(seed=index)(synthetic_windows(lengths, seed=index)))
        batches.append({k: v for k, v in packed.items() if k not in ("errors", "sequence_index")})
    return batches


def loss_and_gradients(model, loss_fn, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(batch)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_step(compiled, eager) -> None:
    """Loss within 1e-5 relative; every gradient within 1e-5 relative plus 1e-6 of the largest gradient (some
    gradients are zero up to rounding: the key projection's bias cancels in the softmax)."""
    (loss_c, grads_c), (loss_e, grads_e) = compiled, eager
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=0)
    assert grads_c.keys() == grads_e.keys() and len(grads_e) > 20
    scale = max(float(g.abs().max()) for g in grads_e.values())
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-5, atol=1e-6 * scale,
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.compile_in_fresh_process
@pytest.mark.parametrize("implementation", ["astromer_blocked", pytest.param("astromer_varlen", marks=needs_kernel)])
def test_packed_budget_step_is_one_graph_for_every_length_mix(implementation):
    model = tiny_model(implementation)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(eager_training_loss(model), fullgraph=True, dynamic=False, backend=counter)
    batches = budget_batches()
    for batch in batches:
        assert_same_step(loss_and_gradients(model, compiled, batch),
                         loss_and_gradients(model, eager_training_loss(model), batch))
    assert counter.frame_count == 1  # fullgraph: one graph, compiled once for all five mixes
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]  # the same, as Dynamo counts
    # the same trace without fullgraph: no break anywhere (the blocked op's kept probabilities have a size that
    # depends on the data, which a split trace accepts with capture_dynamic_output_shape_ops)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        explanation = torch._dynamo.explain(eager_training_loss(model))(batches[0])
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


@pytest.mark.compile_in_fresh_process
@pytest.mark.slow
def test_inductor_step_equals_eager_step():
    model = tiny_model("astromer_blocked")
    compiled = CompiledTrainingLoss(model)
    for batch in budget_batches()[:2]:
        assert_same_step(loss_and_gradients(model, compiled, batch),
                         loss_and_gradients(model, eager_training_loss(model), batch))


@pytest.mark.compile_in_fresh_process
def test_padded_step_is_one_graph():
    """Without packing, padded batches of one width are static too."""
    model = tiny_model("sdpa")
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(eager_training_loss(model), fullgraph=True, dynamic=False, backend=counter)
    for index, lengths in enumerate(([50, 13, 64, 7], [64, 1, 2, 3])):
        padded = AstromerMaskingCollator(seed=index)(synthetic_windows(lengths, seed=index))
        batch = {k: v for k, v in padded.items() if k != "errors"}
        assert_same_step(loss_and_gradients(model, compiled, batch),
                         loss_and_gradients(model, eager_training_loss(model), batch))
    assert counter.frame_count == 1


# ------------------------------------------------------------------------------------------------ pretrain --compile
def test_token_budgets_fit_every_batch_with_a_fallback_for_the_rare_long_batch():
    lengths = [200] * 3 + [10] * 30
    main, fallback = choose_token_budgets(lengths, window_size=200, batch_size=3)
    # mean 3 x 27.3 tokens plus 4 standard deviations of a 3-window sum (4 x 91.6) -> 448.2, rounded up to 512;
    # the 3 longest windows -> 640
    assert (main.max_tokens, fallback.max_tokens) == (512, 640)
    # the 3 shortest windows (30 tokens) leave 482 tokens of padding: 3 sequences of <= 200, 6 in all (7 for 640)
    assert (main.max_sequences, fallback.max_sequences) == (6, 7)
    collator = DeterministicMaskingCollator(0.5, 0.1, 0.1, window_size=200, packed=True,
                                            token_budgets=[(b.max_tokens, b.max_sequences) for b in (fallback, main)])
    for group, tokens in (([200, 10, 10], 512), ([10], 512), ([200, 200, 200], 640), ([200, 200, 10], 512)):
        items = [{**window, "key": key} for key, window in enumerate(synthetic_windows(group))]
        batch = collator(items)
        budget = main if tokens == main.max_tokens else fallback
        assert batch["magnitudes"].shape == (1, tokens) and batch["cu_seqlens"].shape == (budget.max_sequences + 1,)
    # a given --max-tokens that holds every batch needs no fallback; too few --max-sequences are refused
    (only,) = choose_token_budgets(lengths, 200, batch_size=3, max_tokens=700)
    assert only == TokenBudget(700, 3 + 4)
    with pytest.raises(UsageError, match="--max-sequences 5 is too small: with 512 tokens a batch of this data can "
                                         "need 6 sequences"):
        choose_token_budgets(lengths, 200, batch_size=3, max_sequences=5)


@pytest.mark.parametrize("fields, message", [
    ({"compile_mode": "default"}, "--compile-mode default needs --compile"),
    ({"compile": True, "compile_mode": "reduce-overhead", "gradient_accumulation_steps": 2},
     "reduce-overhead cannot accumulate gradients"),
    ({"max_tokens": 1000}, "--max-tokens: the token budget applies to packed batches"),
    ({"packing": True, "max_sequences": 9}, "--max-sequences needs --max-tokens"),
    ({"compile": True, "onednn_linears": True}, "--onednn-linears and --compile exclude each other"),
])
def test_compile_options_are_checked(tmp_path, fields, message):
    with pytest.raises(UsageError, match=message):
        PretrainingConfig(synthetic=10, output_dir=tmp_path, **fields)


@pytest.mark.compile_in_fresh_process
@pytest.mark.slow
def test_pretraining_with_compile_equals_eager_pretraining(tmp_path, monkeypatch):
    """The compiled packed run trains on budget-padded batches and ends with the same weights as the eager packed
    run (no dropout: compiled and eager dropout draw different masks)."""
    compiled_losses = []

    class RecordingCompiledLoss(CompiledTrainingLoss):
        def __init__(self, model, **options):
            super().__init__(model, **options, backend="aot_eager")  # the graph of inductor, without codegen

        def __call__(self, batch):
            assert (tuple(batch["magnitudes"].shape), tuple(batch["cu_seqlens"].shape)) in shapes
            compiled_losses.append(super().__call__(batch))
            return compiled_losses[-1]

    monkeypatch.setattr(pretraining, "CompiledTrainingLoss", RecordingCompiledLoss)
    data = pretraining.load_pretraining_data(PretrainingConfig(synthetic=24, output_dir=tmp_path / "data"), 200)
    lengths = window_lengths(WindowDataset(data.train, "random", 200))
    budgets = choose_token_budgets(lengths, 200, batch_size=6)
    shapes = {((1, b.max_tokens), (b.max_sequences + 1,)) for b in budgets}
    common = dict(curves=data, num_layers=1, hidden_size=32, num_heads=2, intermediate_size=32, batch_size=6,
                  max_steps=3, dropout=0.0, packing=True, attn_implementation="astromer_blocked", quiet=True,
                  report_to="none", mixed_precision="no")
    summaries = {name: run_pretraining(PretrainingConfig(**common, compile=name == "compiled",
                                                         output_dir=tmp_path / name))
                 for name in ("eager", "compiled")}
    assert len(compiled_losses) == 3
    assert summaries["compiled"]["best_validation_rmse"] == pytest.approx(summaries["eager"]["best_validation_rmse"],
                                                                          rel=1e-5)
    weights = {name: AstromerForMaskedReconstruction.from_pretrained(tmp_path / name).state_dict()
               for name in summaries}
    for name, tensor in weights["eager"].items():
        torch.testing.assert_close(weights["compiled"][name], tensor, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.compile_in_fresh_process
@pytest.mark.slow
def test_pretrain_command_with_compile_runs_end_to_end(tmp_path):
    """``astromer pretrain --compile --packing`` with the backend it uses (inductor) on a tiny synthetic run: every
    training step runs the one compiled graph (the budget-padded batches of random windows all share its shape), the
    run ends with a model that loads and reconstructs finite magnitudes."""
    out = tmp_path / "run"
    tiny = ["--num-layers", "1", "--hidden-size", "32", "--num-heads", "2", "--intermediate-size", "32"]
    assert pretrain.main(["--synthetic", "24", *tiny, "--batch-size", "6", "--max-steps", "4", "--packing",
                          "--attn-implementation", "astromer_blocked", "--compile", "--report-to", "none", "--quiet",
                          "--output-dir", str(out)]) == 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 4 and summary["arguments"]["compile"] is True
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert counters["aot_autograd"]["ok"] == 1 and counters["inductor"]["fxgraph_cache_miss"] + counters[
        "inductor"]["fxgraph_cache_hit"] >= 1  # one forward/backward pair, code generated (or reused) by inductor
    model = AstromerForMaskedReconstruction.from_pretrained(out).eval()
    batch = AstromerMaskingCollator(seed=0)(synthetic_windows([30, 12], seed=0))
    with torch.no_grad():
        reconstruction = model(**{k: v for k, v in batch.items() if k != "errors"}).reconstruction
    assert torch.isfinite(reconstruction).all()


def test_cuda_graphs_need_a_cuda_device(tmp_path):
    config = PretrainingConfig(synthetic=10, compile=True, compile_mode="reduce-overhead", output_dir=tmp_path)
    accelerator = SimpleNamespace(device=torch.device("cpu"), distributed_type=DistributedType.NO)
    with pytest.raises(UsageError, match="reduce-overhead replays CUDA graphs: it needs a CUDA device, not cpu"):
        pretraining.build_training_loss(config, accelerator, model=None)


def test_cuda_graph_mode_starts_a_step_and_returns_a_copy_of_the_loss(monkeypatch):
    """With ``cuda_graphs`` each call starts a new CUDA-graph step and returns a copy of the graph's loss, whose
    memory the next replay overwrites (the compiled graph itself is replaced: CUDA graphs need a GPU)."""
    steps = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append("new step"))
    loss_fn = CompiledTrainingLoss(torch.nn.Identity(), cuda_graphs=True)  # compiles lazily, at the first call
    graph_output = torch.tensor(1.5)
    loss_fn._compiled = lambda batch: graph_output
    loss = loss_fn({})
    assert steps == ["new step"]
    assert loss.data_ptr() != graph_output.data_ptr() and float(loss) == 1.5

"""Training entry points: 2-process CPU pretraining, kill-and-resume equality, Trainer fine-tuning, the few-shot
table, --help, argument errors and no clobbering. Tiny models (1–2 layers, hidden 32–64) keep this fast."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TINY = ["--num-layers", "1", "--hidden-size", "32", "--num-heads", "2", "--intermediate-size", "32"]


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """Subprocess environment: the scripts import the installed packages, as a user's would."""
    return dict(os.environ, OMP_NUM_THREADS="1")


def _run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_two_process_cpu_pretraining(tmp_path, env):
    out = tmp_path / "ddp"
    environment = dict(env, ACCELERATE_USE_CPU="1")
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", "train/pretrain.py", "--synthetic", "40",
          *TINY, "--batch-size", "4", "--max-steps", "3", "--quiet", "--output-dir", str(out)], environment)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["arguments"]["distributed_type"] == "DistributedType.MULTI_CPU"
    checkpoint = out / "checkpoints" / "step-00000003"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
    config = [r for r in map(json.loads, (out / "logs" / "pretrain.jsonl").read_text().splitlines())
              if r["event"] == "config"]
    assert config[0]["num_processes"] == 2
    # the final model is a loadable HF folder with the feature extractor
    from modeling_astromer import AstromerFeatureExtractor, AstromerForMaskedReconstruction

    model = AstromerForMaskedReconstruction.from_pretrained(out)
    assert model.config.use_mask_token is True and model.config.num_hidden_layers == 1
    assert AstromerFeatureExtractor.from_pretrained(out).window_size == 200


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, env):
    common = ["--synthetic", "48", *TINY, "--batch-size", "8", "--max-steps", "9", "--save-every", "3",
              "--eval-every", "3", "--quiet", "--seed", "3"]
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    _run([sys.executable, "train/pretrain.py", *common, "--output-dir", str(full)], env)
    # a callback SIGKILLs the run right after step 7: checkpoint step 6 is mid-epoch (5 batches per epoch), step 7
    # is lost
    killed = _run([sys.executable, "tests/crash_after_step.py", "--crash-after-step", "7", *common,
                   "--output-dir", str(crashed)], env, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (crashed / "checkpoints" / "step-00000006").is_dir()
    assert not (crashed / "model.safetensors").exists()
    _run([sys.executable, "train/pretrain.py", *common, "--output-dir", str(crashed), "--resume"], env)

    resumed_summary = json.loads((crashed / "training_summary.json").read_text())
    assert resumed_summary["resumed_from"].endswith("step-00000006")
    for folder in ("checkpoints/step-00000009", "."):
        a, b = _weights(full / folder), _weights(crashed / folder)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{folder}: {key}")
    start = _weights(crashed / "checkpoints" / "step-00000006")  # training really changed the weights
    assert any(not torch.equal(start[k], a[k]) for k in a)
    full_summary = json.loads((full / "training_summary.json").read_text())
    assert resumed_summary["best_validation_rmse"] == full_summary["best_validation_rmse"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, env) -> Path:
    """A tiny encoder pretrained long enough for its embeddings to carry class information."""
    from astromer_train.pretrain import main

    out = tmp_path_factory.mktemp("pretrained") / "model"
    torch.set_num_threads(1)
    assert main(["--synthetic", "400", "--num-layers", "2", "--hidden-size", "64", "--num-heads", "2",
                 "--intermediate-size", "64", "--batch-size", "32", "--max-steps", "200", "--eval-every", "100",
                 "--save-every", "200", "--quiet", "--report-to", "none", "--output-dir", str(out)]) == 0
    return out


def test_trainer_finetuning_beats_chance(tmp_path, pretrained):
    from astromer_train.finetune import main

    out = tmp_path / "ft"
    assert main(["--model", str(pretrained), "--synthetic", "480", "--class-proportions", "uniform",
                 "--spc", "30", "--test-per-class", "30", "--ssl-max-steps", "2", "--ssl-learning-rate", "1e-4",
                 "--epochs", "25", "--learning-rate", "2e-3", "--batch-size", "64", "--quiet",
                 "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    n_classes = len(metrics["label_names"])
    assert n_classes == 6
    window_f1 = metrics["test"]["window"]["f1_macro"]
    assert window_f1 > 1.0 / n_classes + 0.12, metrics["test"]["window"]
    assert 0.0 <= metrics["test"]["light_curve"]["f1_macro"] <= 1.0
    assert metrics["test"]["light_curve"]["n"] == 6 * 30
    assert metrics["test"]["window"]["n"] >= metrics["test"]["light_curve"]["n"]
    assert (out / "classifier" / "model.safetensors").is_file()
    assert (out / "ssl_model" / "model.safetensors").is_file()
    from modeling_astromer import AstromerForSequenceClassification

    clf = AstromerForSequenceClassification.from_pretrained(out / "classifier")
    assert clf.config.num_labels == 6 and clf.config.freeze_encoder


def test_bf16_finetuning_runs_both_stages_in_one_process(tmp_path, pretrained, env):
    """Continued pretraining and the Trainer stage share the process and its bf16 setting, on a CPU too."""
    out = tmp_path / "bf16"
    _run([sys.executable, "train/finetune.py", "--model", str(pretrained), "--synthetic", "120", "--class-proportions",
          "uniform", "--spc", "5", "--test-per-class", "5", "--ssl-max-steps", "2", "--ssl-batch-size", "16",
          "--epochs", "1", "--batch-size", "16", "--mixed-precision", "bf16", "--quiet", "--output-dir", str(out)], env)
    ssl = json.loads((out / "ssl_model" / "training_summary.json").read_text())
    assert ssl["global_step"] == 2 and ssl["arguments"]["mixed_precision_effective"] == "bf16"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classifier"]["global_step"] > 0 and 0.0 <= metrics["test"]["window"]["f1_macro"] <= 1.0


def test_evaluation_table_shape_and_range(tmp_path, pretrained):
    from astromer_train.evaluate_fewshot import main

    out = tmp_path / "table"
    assert main(["--model", str(pretrained), "--synthetic", "300", "--class-proportions", "uniform",
                 "--folds", "2", "--spc", "5", "10", "--test-per-class", "10", "--skip-ssl", "--epochs", "2",
                 "--learning-rate", "1e-3", "--batch-size", "64", "--quiet", "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [(r["fold"], r["spc"]) for r in results["runs"]] == [(0, 5), (0, 10), (1, 5), (1, 10)]
    assert set(results["summary"]) == {"5", "10"}
    for spc, levels in results["summary"].items():
        for level in ("window", "light_curve"):
            stats = levels[level]
            assert stats["n_folds"] == 2 and len(stats["values"]) == 2
            assert all(0.0 <= v <= 1.0 for v in stats["values"])
            assert stats["mean"] == pytest.approx(sum(stats["values"]) / 2)
            assert stats["std"] == pytest.approx(abs(stats["values"][0] - stats["values"][1]) / 2)  # population std
    table = (out / "results.md").read_text().strip().splitlines()
    rows = [line for line in table if line.startswith("| synthetic")]
    assert len(rows) == 2 and all(row.count("±") == 2 for row in rows)


@pytest.mark.parametrize("script", ["pretrain", "finetune", "evaluate_fewshot"])
def test_help(script, env):
    """The scripts run by path and as modules of the installed package, without sys.path edits."""
    for command in ([f"train/{script}.py"], ["-m", f"astromer_train.{script}"]):
        result = _run([sys.executable, *command, "--help"], env)
        assert "--output-dir" in result.stdout and "--overwrite" in result.stdout


def test_bad_arguments_give_clear_errors(tmp_path, env, capsys):
    from astromer_train import evaluate_fewshot as evaluate
    from astromer_train import finetune, pretrain

    with pytest.raises(SystemExit) as exc:
        pretrain.main(["--synthetic", "0", "--output-dir", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "positive integer" in capsys.readouterr().err
    assert pretrain.main(["--output-dir", str(tmp_path / "x")]) == 2
    assert "give a data source" in capsys.readouterr().err
    assert pretrain.main(["--synthetic", "10", "--hidden-size", "30", "--num-heads", "4",
                          "--output-dir", str(tmp_path / "x")]) == 2
    assert "multiple of --num-heads" in capsys.readouterr().err
    assert finetune.main(["--model", str(tmp_path / "nowhere"), "--synthetic", "10",
                          "--output-dir", str(tmp_path / "y")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert evaluate.main(["--model", str(tmp_path), "--output-dir", str(tmp_path / "z")]) == 2
    assert "give a data source" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_existing_output_is_not_clobbered(tmp_path, env, capsys):
    from astromer_train import evaluate_fewshot as evaluate
    from astromer_train import finetune, pretrain

    out = tmp_path / "taken"
    out.mkdir()
    precious = out / "notes.txt"
    precious.write_text("keep me")
    assert pretrain.main(["--synthetic", "20", *TINY, "--max-steps", "1", "--output-dir", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert finetune.main(["--model", str(REPO / "nowhere"), "--synthetic", "10", "--output-dir", str(out)]) == 2
    assert evaluate.main(["--model", str(REPO / "nowhere"), "--synthetic", "10", "--output-dir", str(out)]) == 2
    assert precious.read_text() == "keep me"
    shutil.rmtree(out)


def test_bf16_packed_blocked_pretraining_reports_to_tensorboard(tmp_path, env):
    """CPU bf16 autocast with packed batches, astromer_blocked and the oneDNN linears; TensorBoard gets the same
    scalars as the JSONL log."""
    pytest.importorskip("tensorboard", reason="TensorBoard is optional (pip install tensorboard, or the dev extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    # a process of its own: Accelerate keeps one mixed-precision setting per process, and this test uses bf16
    _run([sys.executable, "train/pretrain.py", "--synthetic", "40", *TINY, "--batch-size", "8", "--max-steps", "4",
          "--eval-every", "2", "--log-every", "1", "--mixed-precision", "bf16", "--attn-implementation",
          "astromer_blocked", "--onednn-linears", "--packing", "--report-to", "all", "--quiet",
          "--output-dir", str(out)], env)
    records = [json.loads(line) for line in (out / "logs" / "pretrain.jsonl").read_text().splitlines()]
    config = next(r for r in records if r["event"] == "config")
    assert config["mixed_precision_effective"] == "bf16" and config["attn_implementation"] == "astromer_blocked"
    assert config["attn_implementation_effective"] == "astromer_blocked"
    assert config["onednn_linear_layers"] == 8  # TINY's one block: q, k, v, o, both residuals, fc_in, fc_out
    logged = {r["step"]: r["val/rmse"] for r in records if "val/rmse" in r}
    assert sorted(logged) == [2, 4] and all(0 < v < 10 for v in logged.values())
    in_tensorboard = {}
    for path in (out / "logs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        if "val/rmse" in accumulator.Tags()["scalars"]:
            in_tensorboard = {e.step: e.value for e in accumulator.Scalars("val/rmse")}
    assert in_tensorboard.keys() == logged.keys()
    for step, value in logged.items():
        assert in_tensorboard[step] == pytest.approx(value, rel=1e-6)


def test_accelerate_launch_runs_the_script(tmp_path, env):
    out = tmp_path / "launched"
    _run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "train/pretrain.py", "--synthetic", "20", *TINY,
          "--batch-size", "8", "--max-steps", "1", "--quiet", "--report-to", "none", "--output-dir", str(out)], env)
    assert json.loads((out / "training_summary.json").read_text())["global_step"] == 1
    assert (out / "model.safetensors").is_file()


def test_no_training_module_hides_another_package():
    """Run by path, a script puts train/ first on sys.path: a module there named like an installed, standard or
    planned package (the Hugging Face ``evaluate``) would hide that package."""
    import importlib.metadata

    taken = set(importlib.metadata.packages_distributions()) | set(sys.stdlib_module_names) | {"evaluate"}
    modules = {path.stem for path in (REPO / "train").glob("*.py")} - {"__init__"}
    assert modules and not modules & taken


# ------------------------------------------------------------------------------------------------- library API
TINY_FIELDS = {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 32}


def test_configurations_check_like_the_command_line(tmp_path):
    from astromer_train import EvaluationConfig, FinetuningConfig, PretrainingConfig, UsageError

    out = tmp_path / "x"
    with pytest.raises(UsageError, match="--batch-size: expected a positive integer, got 0"):
        PretrainingConfig(synthetic=10, batch_size=0, output_dir=out)
    with pytest.raises(UsageError, match="--validation-fraction: expected a number in \\[0, 1\\], got 1.5"):
        PretrainingConfig(synthetic=10, validation_fraction=1.5, output_dir=out)
    with pytest.raises(UsageError, match="--survey: expected one of macho, atlas, got 'kepler'"):
        PretrainingConfig(synthetic=10, survey="kepler", output_dir=out)
    with pytest.raises(UsageError, match="give a data source"):
        PretrainingConfig(output_dir=out)
    with pytest.raises(UsageError, match="give one data source, not dataset and synthetic"):
        PretrainingConfig(dataset="somewhere", synthetic=10, output_dir=out)
    with pytest.raises(UsageError, match="multiple of --num-heads"):
        PretrainingConfig(synthetic=10, hidden_size=30, num_heads=4, output_dir=out)
    with pytest.raises(UsageError, match="--num-layers cannot be combined with --init-from"):
        PretrainingConfig(synthetic=10, init_from=tmp_path, num_layers=2, output_dir=out)
    with pytest.raises(UsageError, match="--resume and --overwrite exclude each other"):
        PretrainingConfig(synthetic=10, resume="latest", overwrite=True, output_dir=out)
    with pytest.raises(UsageError, match="no config.json"):
        FinetuningConfig(model=tmp_path, synthetic=10, output_dir=out)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="--fold must be >= 0"):
        FinetuningConfig(model=tmp_path / "model", synthetic=10, fold=-1, output_dir=out)
    with pytest.raises(UsageError, match="--spc values must be distinct"):
        EvaluationConfig(model=tmp_path / "model", synthetic=10, spc=[5, 5], output_dir=out)
    with pytest.raises(UsageError, match="--spc: expected a positive integer, got 0"):
        EvaluationConfig(model=tmp_path / "model", synthetic=10, spc=[0], output_dir=out)
    assert not out.exists()
    config = EvaluationConfig(model=tmp_path / "model", synthetic=10, spc=[5, 10], output_dir=out)
    assert config.spc == (5, 10) and config.model == str(tmp_path / "model") and config.output_dir == str(out)


def test_packing_chooses_or_refuses_the_attention(tmp_path, capsys):
    from astromer_kernels.registry import packed_attention_implementations
    from astromer_train import PretrainingConfig, UsageError, pretrain

    out = tmp_path / "x"
    assert PretrainingConfig(synthetic=10, output_dir=out).effective_attn_implementation == "sdpa"
    packed = PretrainingConfig(synthetic=10, packing=True, output_dir=out)
    assert packed.effective_attn_implementation == "astromer_varlen"
    for name in packed_attention_implementations():
        config = PretrainingConfig(synthetic=10, packing=True, attn_implementation=name, output_dir=out)
        assert config.effective_attn_implementation == name
    for name in ("sdpa", "eager"):
        assert PretrainingConfig(synthetic=10, attn_implementation=name, output_dir=out).effective_attn_implementation == name
        with pytest.raises(UsageError, match=f"--attn-implementation {name} cannot attend within packed sequences"):
            PretrainingConfig(synthetic=10, packing=True, attn_implementation=name, output_dir=out)
    assert pretrain.main(["--synthetic", "10", "--packing", "--attn-implementation", "sdpa",
                          "--output-dir", str(out)]) == 2
    assert "cannot attend within packed sequences" in capsys.readouterr().err
    assert not out.exists()
    help_text = " ".join(pretrain.build_parser().format_help().split())
    assert "auto: sdpa for padded batches, astromer_varlen for packed ones" in help_text


def test_callbacks_see_every_step_and_precision_stays_per_process(tmp_path):
    from astromer_train import PretrainingConfig, TrainingCallback, UsageError, run_pretraining

    class Recorder:
        def __init__(self) -> None:
            self.seen: list[tuple[int, int]] = []

        def on_step_end(self, progress) -> None:
            self.seen.append((progress.global_step, progress.epoch))

    recorder = Recorder()
    assert isinstance(recorder, TrainingCallback)
    common = dict(synthetic=20, **TINY_FIELDS, batch_size=8, quiet=True, report_to="none")
    summary = run_pretraining(PretrainingConfig(**common, max_steps=4, mixed_precision="no", output_dir=tmp_path / "a"),
                              callbacks=[recorder])
    # 18 training curves in batches of 8: three steps per epoch
    assert recorder.seen == [(1, 0), (2, 0), (3, 1), (4, 1)] and summary["global_step"] == 4
    with pytest.raises(UsageError, match="already trains with mixed precision 'no'"):
        run_pretraining(PretrainingConfig(**common, max_steps=1, mixed_precision="bf16", output_dir=tmp_path / "b"))
    assert not (tmp_path / "b").exists()


def test_issue14_item1_validation_at_the_end_of_an_epoch_sees_every_window(tmp_path):
    """Validation that runs on the last batch of a training epoch covers all validation windows (gathering after
    the validation loop used to apply the training loader's remainder and drop some of them)."""
    from astromer_train import PretrainingConfig, run_pretraining
    from astromer_train.tracking import read_jsonl

    out = tmp_path / "run"
    # 43 training curves in batches of 8: the epoch ends at step 6 with a last batch of 3
    run_pretraining(PretrainingConfig(synthetic=48, **TINY_FIELDS, batch_size=8, max_steps=6, eval_every=3,
                                      report_to="jsonl", quiet=True, output_dir=out))
    n_validation = json.loads((out / "training_summary.json").read_text())["arguments"]["n_validation_curves"]
    seen = {r["step"]: r["val/n_windows"] for r in read_jsonl(out / "logs" / "pretrain.jsonl") if "val/n_windows" in r}
    assert seen == {3: n_validation, 6: n_validation} and n_validation == 5

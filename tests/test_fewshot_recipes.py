"""Few-shot recipes on the bundled real sample: the feature baseline, the linear probe, best-on-validation
fine-tuning from the command line with TrainingArguments flags, the evaluate metrics module, and the DeepSpeed
config. The regression tests of issue 14 are named after its items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import accuracy_score, f1_score

from hub_datasets import make_fewshot_splits
from hub_datasets.samples import load_sdss_rrlyrae

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rrlyrae():
    return load_sdss_rrlyrae(band="r").remove_columns(["period"])


@pytest.fixture(scope="module")
def small_split(rrlyrae, tmp_path_factory) -> Path:
    """One fold of the bundled RR Lyrae sample: 8 training, 2 validation and 8 test curves per class."""
    split = make_fewshot_splits(rrlyrae, n_folds=1, test_per_class=8, samples_per_class=(8,), val_fraction=0.25)
    folder = tmp_path_factory.mktemp("split") / "fold0_spc8"
    split[(0, 8)].save_to_disk(str(folder))
    return folder


def test_issue14_item10_evaluate_metrics_module_is_loaded_by_path_and_used():
    """Issue 14, item 10: the classification metrics are a local `evaluate` module loaded by path (offline), equal
    to scikit-learn, and the fine-tuning and evaluation code score through it."""
    import evaluate

    from astromer_train import finetuning
    from astromer_train.metrics import CLASSIFICATION_METRIC, load_metric

    metric = evaluate.load(str(CLASSIFICATION_METRIC))
    rng = np.random.default_rng(0)
    references, predictions = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    scores = metric.compute(predictions=predictions, references=references, label_names=["a", "b", "c"])
    assert scores["f1_macro"] == pytest.approx(f1_score(references, predictions, average="macro"), abs=1e-12)
    assert scores["accuracy"] == pytest.approx(accuracy_score(references, predictions), abs=1e-12)
    assert scores["n"] == 200 and set(scores["report"]) >= {"a", "b", "c", "macro avg"}
    # a class never predicted still counts (F1 0), as in the papers
    partial = metric.compute(predictions=[0, 0, 1], references=[0, 2, 1], label_names=["a", "b", "c"])
    assert partial["f1_macro"] == pytest.approx(f1_score([0, 2, 1], [0, 0, 1], average="macro", labels=[0, 1, 2],
                                                         zero_division=0))
    assert finetuning.classification_metrics(references, predictions, ["a", "b", "c"]) == load_metric().compute(
        predictions=predictions.tolist(), references=references.tolist(), label_names=["a", "b", "c"])
    assert finetuning.load_metric is load_metric


def test_issue14_item11_finetune_cli_takes_training_arguments_and_leaves_no_trainer_folder(small_split, tmp_path, capsys):
    """Issue 14, item 11: TrainingArguments options work on the fine-tuning command line as in the Hugging Face
    example scripts, and a run leaves no empty trainer/ folder nor epoch checkpoints behind."""
    from astromer_train import finetune
    from astromer_train.finetuning import training_arguments

    parser = finetune.build_parser()
    args = finetune.parse_arguments(parser, [
        "--model", "astromer1-macho", "--dataset", str(small_split), "--output-dir", str(tmp_path / "x"),
        "--report_to", "tensorboard", "--bf16", "--gradient_checkpointing", "--push_to_hub", "--hub_model_id",
        "me/rrlyrae", "--warmup_steps", "3", "--no_remove_unused_columns"])
    config = finetune.config_from_arguments(args)
    assert config.model.endswith("astromer1-macho") and Path(config.model, "config.json").is_file()
    assert config.mixed_precision == "bf16"  # both stages share the precision
    arguments = training_arguments(config, tmp_path / "x")
    assert arguments.report_to == ["tensorboard"] and arguments.bf16 and arguments.gradient_checkpointing
    assert arguments.push_to_hub and arguments.hub_model_id == "me/rrlyrae" and arguments.warmup_steps == 3
    assert arguments.output_dir == str(tmp_path / "x" / "classifier")
    with pytest.raises(SystemExit):
        finetune.parse_arguments(parser, ["--model", "m", "--output-dir", "o", "--no_such_option", "1"])
    assert "--no_such_option" in capsys.readouterr().err

    out = tmp_path / "run"
    assert finetune.main(["--model", "astromer1-macho", "--dataset", str(small_split), "--skip-ssl", "--epochs", "3",
                          "--learning-rate", "1e-3", "--batch-size", "8", "--best-on-validation", "--quiet",
                          "--report_to", "none", "--logging_strategy", "no", "--output-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["classifier", "metrics.json"]
    assert not list((out / "classifier").glob("checkpoint-*"))
    assert (out / "classifier" / "model.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classifier"]["best_on_validation"] and metrics["classifier"]["best_step"] in (2, 4, 6)
    assert metrics["test"]["light_curve"]["n"] == 16 and metrics["label_names"] == ["RRab", "RRc"]
    assert not any("loss" in entry and "eval_loss" not in entry for entry in metrics["classifier"]["log_history"]
                   if "train_runtime" not in entry)  # --logging_strategy no reached the Trainer


def test_issue14_item12_deepspeed_config_does_not_clip_unless_asked():
    """Issue 14, item 12: the DeepSpeed config clipped gradients at 1.0 while the script's default is no clipping.
    Accelerate fills an absent or 'auto' value with 1.0, so the config must say 0 (no clipping)."""
    config = yaml.safe_load((REPO / "train" / "configs" / "deepspeed_zero2.yaml").read_text())
    assert config["deepspeed_config"]["gradient_clipping"] == 0.0
    from astromer_train import PretrainingConfig

    assert PretrainingConfig(synthetic=10, output_dir="unused").max_grad_norm is None
    source = (REPO / "train" / "pretraining.py").read_text()
    assert 'deepspeed_config["gradient_clipping"] = float(config.max_grad_norm or 0.0)' in source


def test_feature_baseline_reproduces_from_its_seed(rrlyrae):
    """Same folds and seed give the same features, forest and numbers in a fresh run; on the bundled sample the
    baseline separates RRab from RRc."""
    pytest.importorskip("light_curve", reason="the feature baseline needs the [baselines] extra")
    from astromer_train.data import CleanedCurves
    from astromer_train.feature_baseline import FEATURE_NAMES, FeatureBaseline, FeatureTable
    from modeling_astromer import AstromerFeatureExtractor

    split = make_fewshot_splits(rrlyrae, n_folds=1, test_per_class=40, samples_per_class=(20,), seed=3)[(0, 20)]
    fe = AstromerFeatureExtractor()
    train, test = (CleanedCurves.from_table(split[s], fe, with_labels=True) for s in ("train", "test"))
    first = FeatureBaseline(seed=7, features=FeatureTable()).fit(train)
    again = FeatureBaseline(seed=7, features=FeatureTable()).fit(train)
    np.testing.assert_array_equal(first.features(test), again.features(test))
    assert first.features(test).shape == (80, len(FEATURE_NAMES))
    p1, p2 = first.predict_proba(test, 2), again.predict_proba(test, 2)
    np.testing.assert_array_equal(p1, p2)
    assert f1_score(test.labels, p1.argmax(axis=1), average="macro") > 0.75


def test_evaluate_linear_probe_with_baseline_and_no_validation(rrlyrae, tmp_path):
    """`astromer evaluate --baseline features --classifier linear` on a user's table: bundled model name, text
    labels, a validation split the small class cannot fill, and the same folds for both columns."""
    pytest.importorskip("light_curve", reason="the feature baseline needs the [baselines] extra")
    from astromer_train.evaluate_fewshot import main

    labels = np.asarray(rrlyrae["label"])
    table = rrlyrae.select(np.sort(np.r_[np.flatnonzero(labels == 0)[:60], np.flatnonzero(labels == 1)[:26]]))
    names = table.features["label"].names
    text_labels = [names[label] for label in table["label"]]
    table = table.remove_columns("label").add_column("label", text_labels)
    data = tmp_path / "mine.parquet"
    table.to_parquet(str(data))
    out = tmp_path / "table"
    assert main(["--model", "astromer1-macho", "--dataset", str(data), "--folds", "2", "--spc", "5", "20",
                 "--test-per-class", "6", "--classifier", "linear", "--skip-ssl", "--baseline", "features", "--quiet",
                 "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [(r["fold"], r["spc"]) for r in results["runs"]] == [(0, 5), (0, 20), (1, 5), (1, 20)]
    spc20 = [r for r in results["runs"] if r["spc"] == 20]
    assert all(r["n_validation_light_curves"] == 4 for r in spc20)  # RRc: 26 - 6 test - 20 train = 0 left
    for run in results["runs"]:
        assert run["n_test_light_curves"] == 12 and 0.0 <= run["baseline_f1_macro_light_curve"] <= 1.0
    markdown = (out / "results.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| mine.parquet")]
    assert "features + RF" in markdown and len(rows) == 2 and all(row.count("±") == 3 for row in rows)
    probe = json.loads((out / "fold0_spc20" / "classifier" / "linear_probe.json").read_text())
    assert probe["label_names"] == ["RRab", "RRc"] and probe["C"] > 0


def test_bundled_model_name_is_accepted_by_every_training_command(tmp_path):
    from astromer_train import EvaluationConfig, FinetuningConfig, PretrainingConfig, UsageError
    from modeling_astromer import bundled_model_path

    folder = str(bundled_model_path("astromer1-macho"))
    out = str(tmp_path / "out")
    continued = PretrainingConfig(synthetic=10, init_from="astromer1-macho", output_dir=out)
    assert continued.init_from == folder and continued.learning_rate == 1e-4  # continued-pretraining default
    assert PretrainingConfig(synthetic=10, output_dir=out).learning_rate == 1e-3  # the official, from scratch
    assert FinetuningConfig(model="astromer1-macho", synthetic=10, output_dir=out).model == folder
    assert EvaluationConfig(model="astromer1-macho", synthetic=10, output_dir=out).model == folder
    with pytest.raises(UsageError, match="bundled model name: astromer1-macho"):
        FinetuningConfig(model="astromer9", synthetic=10, output_dir=out)

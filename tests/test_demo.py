"""The main job in --quick mode: every step runs, the outputs are consistent, nothing is clobbered."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from astromer_app import demo
from astromer_app.cli import main as cli_main
from modeling_astromer.pipeline import load_pipeline


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo") / "run"
    report = demo.run_demo(output, quick=True, progress=False)
    return output, report


def test_quick_demo_writes_the_whole_story(quick_run):
    output, report = quick_run
    assert report == output / "report.md"
    text = report.read_text()
    for section in ("## Data", "## Pretraining", "## Few-shot classification", "## Figures", "## Timings"):
        assert section in text
    linked = re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", text)
    assert {"plots/reconstruction.png", "plots/learning_curves.png"} <= set(linked)
    for name in linked:
        image = Image.open(output / name)
        assert image.format == "PNG" and image.size[0] >= 500 and image.size[1] >= 300
    summary = json.loads((output / "demo_summary.json").read_text())
    facts = summary["facts"]
    assert summary["settings"] == json.loads(json.dumps(demo.asdict(demo.QUICK)))
    assert facts["n_synthetic"] == 6 * demo.QUICK.synthetic_per_class
    assert facts["pretrain"]["global_step"] == demo.QUICK.pretrain_steps
    # the report quotes the evaluation's own numbers
    results = json.loads((output / "evaluation" / "results.json").read_text())
    f1 = results["summary"][str(demo.QUICK.fewshot_spc)]["window"]["mean"]
    assert 0.0 <= f1 <= 1.0 and f"{f1:.4f}" in text
    assert summary["total_seconds"] >= sum(summary["timings"].values()) > 0


def test_demo_embeddings_are_the_pipeline_s(quick_run):
    output, _ = quick_run
    table = pd.read_parquet(output / "embeddings.parquet")
    facts = json.loads((output / "demo_summary.json").read_text())["facts"]
    assert len(table) == facts["n_real"] + facts["n_synthetic"]
    assert set(table["label"][facts["n_real"] :]) == set(facts["class_names"])
    columns = [c for c in table.columns if c.startswith("emb_")]
    assert len(columns) == demo.QUICK.hidden_size
    import datasets

    survey = datasets.load_from_disk(str(output / "data" / "survey")).with_format("numpy")
    pipe = load_pipeline(output / "pretrain")
    for index in (0, len(table) - 1):
        row = survey[index]
        expected = pipe({"time": row["time"], "mag": row["mag"], "err": row["err"]})
        assert table["id"][index] == row["id"]
        np.testing.assert_allclose(
            table.loc[index, columns].to_numpy(np.float32), expected, atol=1e-6, rtol=0
        )
    if (output / "embeddings_astromer1_macho.parquet").is_file():
        released = pd.read_parquet(output / "embeddings_astromer1_macho.parquet")
        assert (
            list(released["id"]) == list(table["id"])
            and len([c for c in released if c.startswith("emb_")]) == 256
        )


def test_demo_refuses_to_clobber(quick_run, capsys):
    output, _ = quick_run
    before = sorted(p.name for p in output.iterdir())
    assert cli_main(["demo", "--output", str(output), "--quick", "-q"]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in output.iterdir()) == before


def test_failed_step_leaves_no_output(tmp_path, monkeypatch):
    def broken(run):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(demo, "_pretrain", broken)
    with pytest.raises(demo.DemoError, match="step 'pretrain' failed: RuntimeError: simulated failure"):
        demo.run_demo(tmp_path / "out", quick=True, progress=False)
    assert list(tmp_path.iterdir()) == []

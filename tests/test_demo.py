"""The main job in --quick mode: every step runs on the real samples, the report's tables are the JSON's numbers,
nothing is clobbered."""

import json
import re

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from astromer_app import demo
from astromer_app.cli import main as cli_main
from astromer_train.fewshot import format_spread
from modeling_astromer import bundled_model_path
from modeling_astromer.pipeline import load_pipeline

pytest.importorskip("light_curve", reason="the demo's feature baseline needs the [baselines] extra")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo") / "run"
    report = demo.run_demo(output, quick=True, progress=False)
    return output, report


def _table_rows(text: str, header_start: str) -> list[list[str]]:
    """The cells of the Markdown table whose header line starts with `header_start`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_quick_demo_report_tables_are_the_json_numbers(quick_run):
    output, report = quick_run
    assert report == output / "report.md"
    text = report.read_text()
    summary = json.loads((output / "demo_summary.json").read_text())
    facts = summary["facts"]
    results = json.loads((output / "evaluation" / "results.json").read_text())
    assert results == json.loads(json.dumps(facts["fewshot"]))

    # the few-shot table: one row per SPC, Astromer and the baseline in the same folds, from results.json
    rows = _table_rows(text, "| SPC |")
    assert [row[0] for row in rows] == [str(s) for s in demo.QUICK.spc]
    for spc, astromer, baseline, difference, folds in rows:
        levels = results["summary"][spc]
        assert astromer == format_spread(levels["light_curve"]) and baseline == format_spread(levels["baseline"])
        assert difference == f"{levels['light_curve']['mean'] - levels['baseline']['mean']:+.4f}"
        assert int(folds) == demo.QUICK.folds == len(levels["light_curve"]["values"])
        assert "±" in astromer  # several folds: a spread
    for run in results["runs"]:
        assert run["n_test_light_curves"] == 2 * demo.QUICK.test_per_class
        assert run["n_train_light_curves"] == 2 * run["spc"]
        assert f"fold {run['fold']} SPC {run['spc']}: {run['n_train_light_curves']} train" in text

    # the data counts are computed, not assumed
    data = datasets.load_from_disk(str(output / "data" / "sdss_rrlyrae_r"))
    counts = pd.Series(data["label"]).value_counts().sort_index().tolist()
    assert facts["rrlyrae"]["n_curves"] == len(data) == sum(counts)
    assert f"{len(data)} light curves ({counts[0]} RRab, {counts[1]} RRc)" in text

    # the reconstruction table
    reconstruction = _table_rows(text, "| light curve | hidden points |")
    assert len(reconstruction) == len(facts["reconstruction"]) >= 2
    for cells, fact in zip(reconstruction, facts["reconstruction"]):
        assert cells == [fact["curve"], str(fact["hidden_points"]), f"{fact['rmse']:.3f}",
                         f"{fact['rmse_window_mean']:.3f}"]
    better = sum(fact["rmse"] < fact["rmse_window_mean"] for fact in facts["reconstruction"])
    assert f"beats the window mean on {better} of these {len(reconstruction)} curves" in text

    linked = re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", text)
    assert set(linked) == {"plots/reconstruction.png", "plots/embeddings.png"}
    for name in linked:
        image = Image.open(output / name)
        assert image.format == "PNG" and image.size[0] >= 500 and image.size[1] >= 300
    assert summary["total_seconds"] >= sum(summary["timings"].values()) > 0
    assert "Pretraining" not in text and not (output / "pretrain").exists()


def test_demo_embeddings_are_the_released_model_s(quick_run):
    output, _ = quick_run
    table = pd.read_parquet(output / "embeddings.parquet")
    facts = json.loads((output / "demo_summary.json").read_text())["facts"]
    assert len(table) == facts["rrlyrae"]["n_curves"] + facts["macho"]["n_curves"] == facts["embeddings"]["n_curves"]
    columns = [c for c in table.columns if c.startswith("emb_")]
    assert len(columns) == 256
    data = datasets.load_from_disk(str(output / "data" / "sdss_rrlyrae_r")).with_format("numpy")
    pipe = load_pipeline(bundled_model_path("astromer1-macho"))
    for index in (0, len(data) - 1):
        row = data[index]
        expected = pipe({"time": row["time"], "mag": row["mag"], "err": row["err"]})
        assert table["id"][index] == row["id"]
        np.testing.assert_allclose(table.loc[index, columns].to_numpy(np.float32), expected, atol=1e-6, rtol=0)


def test_demo_refuses_to_clobber(quick_run, capsys):
    output, _ = quick_run
    before = sorted(p.name for p in output.iterdir())
    assert cli_main(["demo", "--output", str(output), "--quick", "-q"]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in output.iterdir()) == before


def test_failed_step_leaves_no_output(tmp_path, monkeypatch):
    def broken(run):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(demo, "_fewshot", broken)
    with pytest.raises(demo.DemoError, match="step 'few-shot RRab vs RRc.*' failed: RuntimeError: simulated failure"):
        demo.run_demo(tmp_path / "out", quick=True, progress=False)
    assert list(tmp_path.iterdir()) == []

"""Report: loading/validation, ranking tables, plots, example frames, folder output and CLI.

Expected values come from the results JSONs themselves (hand-written fixtures in
tests/fixtures/report/hand, or synthetic results whose metrics scikit-learn computed),
never from the report code.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib import colormaps
from matplotlib.colors import Normalize, to_rgba
from PIL import Image

from oodseg.cli import main
from oodseg.errors import OodsegError
from oodseg.report import load_results
from oodseg.workflows.report import build_report
from oodseg.report import plots
from oodseg.report.frames import CITYSCAPES_PALETTE, colourize, palette_image, render_frames
from oodseg.report.tables import MISSING, format_value, ranking_table, to_csv, to_markdown

FIXTURES = Path(__file__).parents[1] / "fixtures" / "report"
HAND = FIXTURES / "hand"
sys.path.insert(0, str(FIXTURES))
from synthetic import write_results  # noqa: E402

METRIC_PATHS = {"AP": ("AP",), "AUROC": ("AUROC",), "FPR95": ("FPR95",), "sIoU": ("sIoU",), "PPV": ("PPV",),
                "mean_F1": ("mean_F1",), "ECE": ("calibration", "ECE"), "AuSE": ("calibration", "AuSE")}


def json_metric(obj: dict, key: str):
    """A metric straight from a results object (None when absent or null)."""
    for part in METRIC_PATHS[key]:
        obj = (obj or {}).get(part)
    return obj


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    objects = write_results(root / "results", methods=3, frames=2, shape=(48, 96))
    return root / "results", objects


@pytest.fixture(scope="module")
def synthetic_report(synthetic, tmp_path_factory):
    results, objects = synthetic
    out = tmp_path_factory.mktemp("report") / "report"
    summary = build_report(results, out, frames=2)
    return out, summary, objects


def hand_table():
    groups = load_results(HAND).by_dataset()
    return ranking_table("laf", groups["laf"])


# --- loading -----------------------------------------------------------------------------

def test_loads_only_results_files_and_groups_by_dataset():
    results = load_results(HAND)
    assert sorted(ev.method for ev in results.evaluations) == ["alpha", "beta", "gamma"]
    assert list(results.by_dataset()) == ["laf"]


@pytest.mark.parametrize("patch, message", [
    ({"schema": "oodseg.workflows.evaluate"}, "unknown results schema 'oodseg.workflows.evaluate'"),
    ({"version": 2}, "unsupported version 2 of schema 'oodseg.evaluate'"),
    ({"AP": "high"}, "field 'AP' must be a number or null"),
    ({"AP": float("nan")}, "field 'AP' is nan"),
    ({"curves": {"pr": {"recall": [0, 1], "precision": [1]}}}, "inconsistent lengths"),
    ({"curves": {"hist": {"edges": [0, 1], "inlier": [1], "anomaly": [1]}}}, None),
    ({"method": None}, "field 'method' must be a str"),
])
def test_rejects_malformed_results_with_one_line_error(tmp_path, patch, message):
    obj = json.loads((HAND / "alpha.json").read_text())
    obj.update(patch)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.json").write_text(json.dumps(obj))
    if message is None:  # a valid variant: must load
        assert load_results(tmp_path).evaluations[0].curves["hist"]["edges"] == [0, 1]
        return
    with pytest.raises(OodsegError) as err:
        load_results(tmp_path)
    assert message in str(err.value) and "x.json" in str(err.value) and "\n" not in str(err.value)


def test_rejects_corrupt_json_empty_and_missing_folders(tmp_path):
    with pytest.raises(OodsegError, match="results folder does not exist"):
        load_results(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OodsegError, match="no results files found"):
        load_results(tmp_path / "empty")
    shutil.copy(HAND / "not-results.json", tmp_path / "empty")
    with pytest.raises(OodsegError, match="no results files found"):
        load_results(tmp_path / "empty")
    (tmp_path / "bad.json").write_text('{"schema": "oodseg.evaluate", ')
    with pytest.raises(OodsegError, match=r"bad.json: corrupt JSON"):
        load_results(tmp_path)


def test_hidden_partial_files_are_skipped(tmp_path):
    shutil.copy(HAND / "alpha.json", tmp_path)
    (tmp_path / ".alpha.json.x.partial.json").write_text("{broken")
    assert [ev.method for ev in load_results(tmp_path).evaluations] == ["alpha"]


def test_duplicate_method_on_a_dataset_gets_distinct_labels(tmp_path):
    for sub in ("run1", "run2"):
        (tmp_path / sub).mkdir()
        shutil.copy(HAND / "alpha.json", tmp_path / sub)
    labels = sorted(ev.label for ev in load_results(tmp_path).evaluations)
    assert labels == ["alpha (run1/alpha.json)", "alpha (run2/alpha.json)"]


def test_old_results_without_protocol_read_as_exact_next_to_smiyc_ones(tmp_path):
    shutil.copy(HAND / "alpha.json", tmp_path)  # written before results recorded their protocol
    newer = json.loads((HAND / "beta.json").read_text())
    newer.update(protocol="smiyc", smiyc_bins=768)
    (tmp_path / "beta.json").write_text(json.dumps(newer))
    evaluations = {ev.label: ev for ev in load_results(tmp_path).evaluations}
    assert "protocol" not in evaluations["alpha"].data and evaluations["beta"].data["protocol"] == "smiyc"
    assert evaluations["beta"].metrics["AP"] == newer["AP"]
    build_report(tmp_path, tmp_path / "report", frames=0)
    assert "protocol exact/smiyc" in (tmp_path / "report" / "index.html").read_text()


# --- tables ------------------------------------------------------------------------------

def test_table_values_and_order_equal_the_json():
    table = hand_table()
    assert table.labels == ("beta", "gamma", "alpha")  # AP 0.7, 0.7 (tie → by name), 0.5
    assert [c.key for c in table.columns] == ["AP", "AUROC", "FPR95", "sIoU", "PPV", "mean_F1", "ECE", "AuSE"]
    for label, row in zip(table.labels, table.values):
        obj = json.loads((HAND / f"{label}.json").read_text())
        assert row == tuple(json_metric(obj, c.key) for c in table.columns)


def test_best_per_column_respects_direction_ties_and_missing():
    table = hand_table()
    best = {c.key: sorted(table.labels[r] for r in rows) for c, rows in zip(table.columns, table.best)}
    assert best == {"AP": ["beta", "gamma"], "AUROC": ["gamma"], "FPR95": ["beta"],  # FPR95: lower wins
                    "sIoU": ["alpha"], "PPV": ["beta"], "mean_F1": ["alpha", "beta"],
                    "ECE": ["beta"], "AuSE": ["alpha"]}                               # ECE/AuSE: lower win


def test_cell_formatting_and_missing_dash():
    table = hand_table()
    col = {c.key: c for c in table.columns}
    assert format_value(0.7, col["AP"]) == "70.00"
    assert format_value(0.02, col["AuSE"]) == "0.0200"
    assert format_value(None, col["sIoU"]) == MISSING == "—"
    md = to_markdown([table])
    gamma = next(line for line in md.splitlines() if line.startswith("| gamma"))
    assert [cell.strip() for cell in gamma.strip("|").split("|")] == \
        ["gamma", "**70.00**", "**95.00**", "35.00", "20.00", "—", "10.00", "—", "—"]


def test_optional_column_groups_only_when_present(tmp_path):
    obj = json.loads((HAND / "gamma.json").read_text())
    for key in ("sIoU", "mean_F1"):
        obj.pop(key)
    (tmp_path / "g.json").write_text(json.dumps(obj))
    table = ranking_table("laf", load_results(tmp_path).evaluations)
    assert [c.key for c in table.columns] == ["AP", "AUROC", "FPR95"]


def test_csv_round_trips_the_json_numbers():
    rows = list(csv.DictReader(io.StringIO(to_csv([hand_table()]))))
    assert len(rows) == 3 * 8
    for row in rows:
        obj = json.loads((HAND / f"{row['method']}.json").read_text())
        expected = json_metric(obj, row["metric"])
        assert (row["value"] == "") if expected is None else (float(row["value"]) == expected)


# --- plots -------------------------------------------------------------------------------

def test_pr_roc_lines_are_the_json_curves(synthetic, tmp_path):
    results, objects = synthetic
    evaluations = load_results(results).by_dataset()["anomaly"]
    colours = plots.method_colours([ev.label for ev in evaluations])
    fig = plots.plot_pr_roc(evaluations, colours, tmp_path / "c.png")
    ax_pr, ax_roc = fig.axes
    for ax, key, x, y in ((ax_pr, "pr", "recall", "precision"), (ax_roc, "roc", "fpr", "tpr")):
        lines = [line for line in ax.lines if line.get_label().split(" (")[0].startswith("m")]
        assert len(lines) == 3
        for line in lines:
            obj = next(o for o in objects if o["dataset"] == "anomaly" and o["method"] == line.get_label().split()[0])
            np.testing.assert_array_equal(line.get_xdata(), obj["curves"][key][x])
            np.testing.assert_array_equal(line.get_ydata(), obj["curves"][key][y])
            assert line.get_color() == colours[obj["method"]]
    assert Image.open(tmp_path / "c.png").size == (1070, 400)


def test_histogram_panels_hold_the_json_densities(synthetic, tmp_path):
    results, objects = synthetic
    evaluations = load_results(results).by_dataset()["obstacle"]
    fig = plots.plot_score_histograms(evaluations, tmp_path / "h.png")
    assert [ax.get_title() for ax in fig.axes] == ["m0", "m1", "m2"]
    for ax in fig.axes:
        obj = next(o for o in objects if o["dataset"] == "obstacle" and o["method"] == ax.get_title())
        stairs = [p for p in ax.patches if p.get_fill() is False]
        inlier, anomaly = (s.get_data() for s in stairs)
        np.testing.assert_allclose(inlier.values, obj["curves"]["hist"]["inlier"])
        np.testing.assert_allclose(anomaly.values, obj["curves"]["hist"]["anomaly"])
        np.testing.assert_allclose(inlier.edges, obj["curves"]["hist"]["edges"])


def test_method_colours_distinct_for_twenty_methods():
    colours = plots.method_colours([f"method{i}" for i in range(20)])
    assert len({to_rgba(c) for c in colours.values()}) == 20


def test_meta_and_training_charts(synthetic, tmp_path):
    results = load_results(synthetic[0])
    (path, meta), = results.metas
    fig = plots.plot_meta_thresholds(meta, tmp_path / "m.png")
    fp_before = next(line for line in fig.axes[0].lines if line.get_label() == "FP before")
    np.testing.assert_array_equal(fp_before.get_ydata(), [row["before"]["FP"] for row in meta["thresholds"]])
    training, = results.trainings
    fig = plots.plot_training(training, tmp_path / "t.png")
    loss = next(line for line in fig.axes[0].lines if line.get_label() == "loss")
    log = [json.loads(line) for line in (training.path.parent / "log.jsonl").read_text().splitlines()]
    np.testing.assert_array_equal(loss.get_ydata(), [r["loss"] for r in log])
    assert sorted(line.get_label() for line in fig.axes[0].lines) == ["ce", "loss", "ood"]


# --- frames ------------------------------------------------------------------------------

def test_colourize_matches_matplotlib_colormap(rng):
    score = rng.normal(size=(7, 9)).astype(np.float32)
    got = colourize(score, -1.0, 1.5).astype(int)
    reference = colormaps["inferno"](Normalize(-1.0, 1.5, clip=True)(score))[..., :3] * 255
    assert np.abs(got - reference).max() <= 8  # 256-entry table vs continuous map: within one step
    assert (got[score >= 1.5] == got[score >= 1.5][0]).all()


def test_palettes():
    labels = np.array([[0, 1, 255], [13, 18, 254]], dtype=np.uint8)
    semantic = palette_image(labels, semantic=True)
    assert semantic[0, 0].tolist() == [128, 64, 128] and semantic[1, 0].tolist() == [0, 0, 142]
    assert semantic[0, 2].tolist() == [0, 0, 0] and semantic[1, 2].tolist() == [0, 0, 0]
    ood = palette_image(labels[:1], semantic=False)
    assert ood[0, 1].tolist() == [255, 140, 0] and ood[0, 2].tolist() == [0, 0, 0]


def test_frames_share_one_colour_scale_per_method(synthetic, tmp_path):
    results_dir, objects = synthetic
    groups = load_results(results_dir).by_dataset()
    grids, scales = render_frames(groups, 2, tmp_path / "frames", tmp_path)
    assert [g.dataset for g in grids] == ["anomaly", "obstacle"]
    for method in ("m0", "m1", "m2"):
        thumbs = []
        for obj in (o for o in objects if o["method"] == method):
            for h5 in sorted(Path(obj["scores"]).glob("*.hdf5")):
                with h5py.File(h5) as f:
                    score = f["value"][()].astype(np.float32)
                thumbs.append(np.asarray(Image.fromarray(score).resize((256, 128), Image.BILINEAR)))
        expected = np.percentile(np.concatenate([t.ravel() for t in thumbs]), [1, 99])
        np.testing.assert_allclose(scales[method], expected, rtol=1e-6)
    grid = grids[0]
    m = grid.methods.index("m2")
    png = np.asarray(Image.open(tmp_path / grid.rows[1].heatmaps[m]).convert("RGB"))
    with h5py.File(Path(next(o for o in objects if o["method"] == "m2")["scores"]) / "anomaly_001.hdf5") as f:
        thumb = np.asarray(Image.fromarray(f["value"][()].astype(np.float32)).resize((256, 128), Image.BILINEAR))
    np.testing.assert_array_equal(png, colourize(thumb, *scales["m2"]))
    prediction = np.asarray(Image.open(tmp_path / grid.rows[0].prediction).convert("RGB")).reshape(-1, 3)
    assert {tuple(c) for c in prediction} <= {tuple(c) for c in CITYSCAPES_PALETTE}
    assert grid.checkpoint.endswith("ckpt/baseline")


def test_frames_fail_clearly_on_missing_score_file(synthetic, tmp_path):
    results_dir, _ = synthetic
    copy = tmp_path / "results"
    shutil.copytree(results_dir, copy)
    for path in copy.rglob("*.json"):  # point the copy's evaluations at the copied data
        path.write_text(path.read_text().replace(str(results_dir), str(copy)))
    (copy / "scores" / "m1" / "obstacle" / "obstacle_001.hdf5").unlink()
    out = tmp_path / "report"
    with pytest.raises(OodsegError, match=r"obstacle_001.*--frames 0"):
        build_report(copy, out, frames=2)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["results"]  # nothing partial left
    build_report(copy, out, frames=0)
    assert not list((out).glob("frames"))


# --- the report folder -------------------------------------------------------------------

class _TableCells(HTMLParser):
    """Collects (dataset, method, key, data-value, text, is-best) of the ranking tables."""

    def __init__(self):
        super().__init__()
        self.cells, self.dataset, self.method, self.cell = [], None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and "ranking" in attrs.get("class", ""):
            self.dataset = attrs["data-dataset"]
        elif tag == "tr" and "data-method" in attrs:
            self.method = attrs["data-method"]
        elif tag == "td" and self.method and "num" in attrs.get("class", ""):
            self.cell = [self.dataset, self.method, attrs.get("data-key"), attrs.get("data-value"), "",
                         "best" in attrs["class"].split()]

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[4] += data

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.cells.append(tuple(self.cell))
            self.cell = None
        elif tag == "table":
            self.method = None


def test_report_folder_is_self_contained_and_complete(synthetic_report):
    out, summary, objects = synthetic_report
    html = (out / "index.html").read_text()
    assert summary["evaluations"] == 6 and summary["datasets"] == ["anomaly", "obstacle"]
    assert "http://" not in html and "https://" not in html and "<link" not in html
    sources = [line.split('src="')[1].split('"')[0] for line in html.split("<img ")[1:]]
    # 2 datasets × 2 frames × (image, GT, prediction, 3 heatmaps), 2 × 3 colour bars, 2 × 4 charts, meta, training
    assert len(sources) == 2 * 2 * 6 + 2 * 3 + 2 * 4 + 1 + 1
    assert all((out / src).is_file() for src in sources)
    assert json.loads((out / "tables.json").read_text())["schema"] == "oodseg.report"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_html_cells_equal_json_numbers(synthetic_report):
    out, _, objects = synthetic_report
    parser = _TableCells()
    parser.feed((out / "index.html").read_text())
    assert len(parser.cells) == 2 * 3 * 8
    for dataset, method, key, value, text, _ in parser.cells:
        obj = next(o for o in objects if o["dataset"] == dataset and o["method"] == method)
        expected = json_metric(obj, key) if key else None
        if value is None:
            assert text == "—"
            assert expected is None or key is None
            continue
        assert float(value) == expected
        assert text == (f"{expected:.4f}" if key == "AuSE" else f"{100 * expected:.2f}")


def test_html_highlights_best_cells(tmp_path):
    build_report(HAND, tmp_path / "r", frames=0)
    parser = _TableCells()
    parser.feed((tmp_path / "r" / "index.html").read_text())
    best = sorted((method, key) for _, method, key, _, _, is_best in parser.cells if is_best)
    assert best == sorted([("beta", "AP"), ("gamma", "AP"), ("gamma", "AUROC"), ("beta", "FPR95"),
                           ("alpha", "sIoU"), ("beta", "PPV"), ("alpha", "mean_F1"), ("beta", "mean_F1"),
                           ("beta", "ECE"), ("alpha", "AuSE")])
    missing = sorted(method for _, method, key, _, text, _ in parser.cells if text == "—")
    assert missing == ["beta", "gamma", "gamma", "gamma"]  # beta sIoU; gamma PPV, ECE, AuSE


def test_refuses_to_overwrite_and_replaces_with_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(OodsegError, match="not empty; pass overwrite=True"):
        build_report(HAND, out, frames=0)
    with pytest.raises(OodsegError, match="not a previous report"):
        build_report(HAND, out, frames=0, overwrite=True)
    assert (out / "keep.txt").read_text() == "user data"
    shutil.rmtree(out)
    build_report(HAND, out, frames=0)
    (out / "stale.png").write_bytes(b"x")
    build_report(HAND, out, frames=0, overwrite=True)
    assert (out / "index.html").is_file() and not (out / "stale.png").exists()
    with pytest.raises(OodsegError, match="must not contain the results folder"):
        build_report(HAND, HAND.parent, frames=0, overwrite=True)


def test_cli_report_json_and_one_line_errors(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["report", str(HAND), "--out", str(tmp_path / "r"), "--frames", "0", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["evaluations"] == 3
    again = runner.invoke(main, ["report", str(HAND), "--out", str(tmp_path / "r")])
    assert again.exit_code == 2
    assert again.output.strip().startswith("error: --out") and len(again.output.strip().splitlines()) == 1
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "x.json").write_text('{"schema": "oodseg.future", "version": 1}')
    bad = runner.invoke(main, ["report", str(tmp_path / "res"), "--out", str(tmp_path / "r2")])
    assert bad.exit_code == 2 and "unknown results schema 'oodseg.future'" in bad.output
    assert "Examples:" in runner.invoke(main, ["report", "--help"]).output

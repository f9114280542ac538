"""`finetune evaluate` and `predict` on a tiny ImageFolder of solid colours, through the CLI,
with a model whose logits are the mean of each colour channel: every prediction, and so every
figure of the evaluation, is known by hand.

Classes (sorted folder names) are red, green, blue in channel order; after normalisation
(mean 0.5, std 0.5) a pure colour image has logits 1 for its channel and -1 for the others.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from _run_cli import words
from PIL import Image
from typer.testing import CliRunner, Result

import cli.evaluate
import cli.training.run_folder
from cli.config import Config
from cli.main import app
from cli.training.run_folder import BEST, RunFolder
from engine import nn

COLOURS = {"r": (255, 0, 0), "g": (0, 255, 0), "b": (0, 0, 255)}
CLASSES = ["a-red", "b-green", "c-blue"]
# Per split: each class's images by colour. Validation: red row r r g, green g g, blue r b.
SPLITS = {
    "train": {"a-red": "r", "b-green": "g", "c-blue": "b"},
    "val": {"a-red": "rrg", "b-green": "gg", "c-blue": "rb"},
    "test": {"a-red": "r", "b-green": "gb", "c-blue": "b"},
}
VAL_CONFUSION = [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
P_HIT = math.e / (math.e + 2 / math.e)  # softmax([1, -1, -1])[0]
P_MISS = (1 / math.e) / (math.e + 2 / math.e)


class ChannelMeans(nn.Module):
    """Logits = the mean of each input channel."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


@pytest.fixture
def colours(tmp_path: Path) -> Path:
    root = tmp_path / "colours"
    for split, classes in SPLITS.items():
        for name, images in classes.items():
            (root / split / name).mkdir(parents=True)
            for i, colour in enumerate(images):
                Image.new("RGB", (6, 5), COLOURS[colour]).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture
def run_dir(tmp_path: Path, colours: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = Config.from_dict(
        {
            "model": {"num_classes": 3},
            "data": {
                "dataset": "imagefolder",
                "root": str(colours),
                "image_size": 4,
                "resize": 4,
                "mean": [0.5] * 3,
                "std": [0.5] * 3,
                "batch_size": 2,
                "num_workers": 0,
            },
        }
    )
    folder = RunFolder(tmp_path / "run")
    folder.start(config, CLASSES)
    (folder.path / BEST).write_bytes(b"the model is ChannelMeans")
    for module in (cli.evaluate, cli.training.run_folder):
        monkeypatch.setattr(module, "load_trained_model", lambda cfg, weights: ChannelMeans())
    return folder.path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_evaluate_json_matches_the_hand_computed_confusion_matrix(
    tmp_path: Path, run_dir: Path
) -> None:
    out = tmp_path / "eval.json"
    result = invoke("evaluate", str(run_dir), "--json", str(out), "--csv", str(tmp_path / "e.csv"))
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["format"] == "finetune.evaluate.v1" and report["split"] == "val"
    assert report["classes"] == CLASSES and report["confusion_matrix"] == VAL_CONFUSION
    assert report["images"] == 7 and report["accuracy"] == pytest.approx(5 / 7)
    assert report["top_k"] == 3 and report["top5_accuracy"] == 1.0
    loss = -(5 * math.log(P_HIT) + 2 * math.log(P_MISS)) / 7
    assert report["loss"] == pytest.approx(loss, rel=1e-6)
    per_class = {row["class"]: row for row in report["per_class"]}
    assert per_class["a-red"] == {
        "class": "a-red",
        "images": 3,
        "predicted": 3,
        "precision": pytest.approx(2 / 3),
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(2 / 3),
    }
    assert per_class["b-green"]["precision"] == pytest.approx(2 / 3)
    assert per_class["b-green"]["recall"] == 1.0
    assert per_class["c-blue"]["precision"] == 1.0 and per_class["c-blue"]["recall"] == 0.5
    precision, recall = [2 / 3, 2 / 3, 1], [2 / 3, 1, 1 / 2]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall, strict=True)]
    assert report["macro"] == pytest.approx(
        {"precision": np.mean(precision), "recall": np.mean(recall), "f1": np.mean(f1)}
    )
    weights = np.array([3, 2, 2]) / 7
    assert report["weighted"]["f1"] == pytest.approx(float(np.dot(weights, f1)))
    assert report["weighted"]["recall"] == pytest.approx(5 / 7)

    text = words(result.stdout)
    assert "accuracy 71.4%" in text and "top-3 accuracy 100.0%" in text
    assert "a-red 3 3 66.7% 66.7% 66.7%" in text and "c-blue 2 1 100.0% 50.0% 66.7%" in text
    assert "a-red 2 1 0 b-green 0 2 0 c-blue 1 0 1" in text  # the confusion matrix
    with open(tmp_path / "e.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["class"] for row in rows] == [*CLASSES, "macro avg", "weighted avg"]
    assert float(rows[2]["recall"]) == 0.5 and float(rows[3]["f1"]) == pytest.approx(np.mean(f1))


def test_evaluate_the_test_split_and_another_folder(
    tmp_path: Path, run_dir: Path, colours: Path
) -> None:
    out = tmp_path / "test.json"
    assert invoke("evaluate", str(run_dir), "--split", "test", "--json", str(out)).exit_code == 0
    report = json.loads(out.read_text())
    assert report["split"] == "test"
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]

    pool = colours / "val"  # class folders directly: every image is evaluated
    result = invoke("evaluate", str(run_dir), "--data", str(pool), "--json", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert (report["split"], report["data"]) == ("all", str(pool))
    assert report["confusion_matrix"] == VAL_CONFUSION

    (pool / "c-blue").rename(pool / "c-azure")
    result = invoke("evaluate", str(run_dir), "--data", str(pool))
    assert result.exit_code == 1
    assert "classes ['a-red', 'b-green', 'c-azure'] are not the run's" in words(result.output)


def test_evaluate_a_missing_test_split_says_how_to_add_it(run_dir: Path, colours: Path) -> None:
    shutil.rmtree(colours / "test")
    result = invoke("evaluate", str(run_dir), "--split", "test")
    assert result.exit_code == 1
    assert "no test split: add" in words(result.output)


def make_inbox(tmp_path: Path) -> Path:
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    Image.new("RGB", (5, 5), COLOURS["g"]).save(inbox / "b.png")
    Image.new("RGB", (5, 5), COLOURS["b"]).save(inbox / "sub" / "a.PNG")
    Image.new("RGB", (5, 5), COLOURS["r"]).save(inbox / "a.png")
    (inbox / "notes.txt").write_text("not an image, not listed")
    return inbox


def test_predict_a_folder_to_csv_and_json(tmp_path: Path, run_dir: Path) -> None:
    inbox = make_inbox(tmp_path)
    single = tmp_path / "one.bmp"
    Image.new("RGB", (5, 5), COLOURS["b"]).save(single)
    files = ["--csv", str(tmp_path / "p.csv"), "--json", str(tmp_path / "p.json")]
    result = invoke("predict", str(run_dir), str(single), str(inbox), "--top-k", "2", *files)
    assert result.exit_code == 0, result.output
    order = [single, inbox / "a.png", inbox / "b.png", inbox / "sub" / "a.PNG"]
    expected = ["c-blue", "a-red", "b-green", "c-blue"]
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "class_1", "probability_1", "class_2", "probability_2"]
    assert [row[0] for row in rows[1:]] == [str(path) for path in order]
    assert [row[1] for row in rows[1:]] == expected
    assert all(float(row[2]) == pytest.approx(P_HIT, rel=1e-6) for row in rows[1:])
    assert all(float(row[4]) == pytest.approx(P_MISS, rel=1e-6) for row in rows[1:])
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["format"] == "finetune.predict.v1" and report["top_k"] == 2
    assert [p["top"][0]["class"] for p in report["predictions"]] == expected
    assert report["predictions"][0]["path"] == str(single) and report["skipped"] == []
    assert f"{single} c-blue {P_HIT:.1%}" in words(result.stdout)


def test_predict_names_unreadable_files_and_fails_unless_skip_bad(
    tmp_path: Path, run_dir: Path
) -> None:
    inbox = make_inbox(tmp_path)
    (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "p.json"
    failed = invoke("predict", str(run_dir), str(inbox), "--json", str(out))
    assert failed.exit_code == 1
    assert f"cannot read image {inbox / 'broken.png'}" in words(failed.output)
    assert "--skip-bad" in failed.output and "Traceback" not in failed.output
    report = json.loads(out.read_text())  # the others were still classified and written
    assert len(report["predictions"]) == 3
    assert [s["path"] for s in report["skipped"]] == [str(inbox / "broken.png")]
    skipped = invoke("predict", str(run_dir), str(inbox), "--skip-bad")
    assert skipped.exit_code == 0, skipped.output
    assert "skipped 1 unreadable image" in words(skipped.output)


def test_predict_an_empty_folder(tmp_path: Path, run_dir: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = invoke("predict", str(run_dir), str(tmp_path / "empty"))
    assert result.exit_code == 1
    assert "no images in" in words(result.output)

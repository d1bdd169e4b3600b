"""`finetune-search predict`: an exported model on image files and folders, top-K classes
named from the export, bad images skipped with one line each."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.cli import main
from search.outputs.export import export_experiment

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def exported(tracked_search, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict") / "export"
    export_experiment(str(tracked_search.experiment), str(out))
    return out


def _images(folder: Path) -> Path:
    """Good images of several sizes in a folder tree, a file that is no image, a gray one."""
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    for name, shape in (
        ("a.png", (32, 32, 3)),
        ("b.png", (20, 50, 3)),
        ("sub/c.jpg", (64, 64, 3)),
    ):
        Image.fromarray((rng.random(shape) * 255).astype("uint8")).save(folder / name)
    (folder / "broken.png").write_bytes(b"not an image at all")
    Image.fromarray((rng.random((32, 32)) * 255).astype("uint8")).save(folder / "gray.png")
    return folder


@pytest.mark.slow
def test_predict_names_top_k_classes_in_csv_and_json_and_skips_bad_images(
    exported, tmp_path, capsys
):
    # The export carries the digits' class names beside the model; renamed here, so that the
    # names printed can only have come from that file.
    assert json.loads((exported / "class_names.json").read_text()) == [str(i) for i in range(10)]
    (exported / "class_names.json").write_text(json.dumps(NAMES))
    images = _images(tmp_path / "images")
    out = tmp_path / "preds.csv"
    assert (
        main(
            [
                "predict",
                str(exported / "best_model.keras"),
                str(images),
                "--top",
                "3",
                "--out",
                str(out),
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    done = capsys.readouterr()
    skipped = [line for line in done.err.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 2 and "note:" not in done.err
    assert any("broken.png: cannot decode image" in line for line in skipped)
    assert any("gray.png: grayscale image" in line for line in skipped)
    assert "3 images predicted, 2 skipped" in done.out
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b.png", "c.jpg"]
    for row in rows:
        probabilities = [float(row[f"probability_{i}"]) for i in (1, 2, 3)]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1
        assert {row[f"class_{i}"] for i in (1, 2, 3)} <= set(NAMES)

    as_json = tmp_path / "preds.json"
    assert (
        main(
            [
                "predict",
                str(exported / "best_model.keras"),
                str(images / "a.png"),
                str(images / "broken.png"),
                "--top",
                "2",
                "--out",
                str(as_json),
            ]
        )
        == 0
    )
    data = json.loads(as_json.read_text())
    assert [Path(p["path"]).name for p in data["predictions"]] == ["a.png"]
    assert [c["class"] for c in data["predictions"][0]["top"]] == [
        rows[0]["class_1"],
        rows[0]["class_2"],
    ]
    assert [Path(s["path"]).name for s in data["skipped"]] == ["broken.png"]


def test_predict_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    images = _images(tmp_path / "images")
    model = tmp_path / "model.keras"
    model.write_bytes(b"not a model")
    for argv, message in (
        ([str(tmp_path / "missing.keras"), str(images)], "MODEL: "),
        ([str(model), str(images), "--top", "0"], "--top: must be an int >= 1"),
        (
            [str(model), str(images), "--out", str(tmp_path / "p.txt")],
            "--out: must end in .csv or .json",
        ),
        ([str(model), str(tmp_path / "nowhere")], "IMAGES: "),
        ([str(model), str(images)], "MODEL: cannot load"),
    ):
        assert main(["predict", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "p.txt").exists()


@pytest.mark.slow
def test_predict_refuses_too_many_classes_and_all_unreadable_images(exported, tmp_path, capsys):
    images = _images(tmp_path / "images")
    model = str(exported / "best_model.keras")
    assert main(["predict", model, str(images), "--top", "11"]) == 2
    assert "--top: must be <= the model's 10 classes, got 11" in capsys.readouterr().err
    assert main(["predict", model, str(images / "broken.png"), str(images / "gray.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and err[-1] == "error: IMAGES: none of the 2 images could be read"

"""`asyncvid eval` scores a model on the held-out shapes prompts and reports step similarity."""

from __future__ import annotations

import json

from asyncvid.cli.main import main


def test_eval_reports_adherence_and_similarity(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "tiny-random", "--seeds", "1", "--steps", "2", "--compare-random",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["adherence"]["n"] == 24
    assert 0.0 <= report["adherence"]["colour"] <= 1.0
    for key in ("step_similarity", "step_similarity_random_weights"):
        sim = report[key]
        assert sim["steps"] == 2 and -1.0 <= sim["min_cosine"] <= sim["mean_cosine"] <= 1.0
        assert sim["mean_relative_change"] > 0


def test_eval_of_a_wan_model_compares_one_call_per_step(tmp_path):
    """WanPipeline calls its transformer twice a step (prompt, negative prompt): the step similarity
    pairs the prompt's calls of neighbouring steps, in the middle block; clips have 4k+1 frames."""
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "tiny-random-wan", "--seeds", "1", "--steps", "3", "--compare-random",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["frames"] == 9 and report["adherence"]["n"] == 24
    for key in ("step_similarity", "step_similarity_random_weights"):
        sim = report[key]
        assert sim["module"] == "blocks.2" and sim["steps"] == 3
        assert -1.0 <= sim["min_cosine"] <= sim["mean_cosine"] <= 1.0 and sim["mean_relative_change"] > 0


def test_eval_of_an_image_to_video_model_conditions_on_first_frames(tmp_path):
    """An SVD pipeline is scored on the held-out combinations from their clips' first frames, the
    direction given as motion bucket: every combination once per seed."""
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "tiny-random-svd", "--seeds", "1", "--steps", "2", "--compare-random",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["adherence"]["n"] == 24 and report["frames"] == 8
    for key in ("step_similarity", "step_similarity_random_weights"):
        sim = report[key]
        assert sim["module"] == "mid_block" and sim["steps"] == 2 and sim["mean_relative_change"] > 0

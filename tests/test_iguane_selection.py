"""Checkpoint selection of IGUANe training (harmonix.iguane.training.selection): the held-out
split, the record of scores and the score of a generator on the held-out images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harmonix.iguane.training import selection as S


def _history() -> dict:
    return {"val_step": [], "val_score": [], "best_step": None, "best_score": None}


def test_validation_split_holds_out_source_images_only():
    sites = np.array(["ref"] * 10 + ["a"] * 10 + ["b"] * 20)
    held = S.validation_split(sites, "ref", 0.1, np.random.default_rng(0))
    assert held == sorted(held)
    assert [sites[i] for i in held].count("a") == 1
    assert [sites[i] for i in held].count("b") == 2
    assert S.validation_split(sites, "ref", 0.0, np.random.default_rng(0)) == []
    again = S.validation_split(sites, "ref", 0.1, np.random.default_rng(0))
    assert again == held  # reproducible from the generator


def test_validation_split_keeps_one_image_per_site_to_train():
    sites = np.array(["ref", "ref", "a", "b", "b", "b"])
    held = S.validation_split(sites, "ref", 0.1, np.random.default_rng(1))
    assert len(held) == 1 and sites[held[0]] == "b"  # tiny data: the largest site gives one
    assert S.validation_split(np.array(["ref", "a"]), "ref", 0.5, np.random.default_rng(0)) == []


def test_record_score_keeps_the_best_ties_to_the_later_and_skips_nan():
    hist = _history()
    assert not S.record_score(hist, 1, float("nan"))
    assert hist["best_step"] is None
    assert S.record_score(hist, 2, -0.5)
    assert not S.record_score(hist, 3, -0.7)
    assert S.record_score(hist, 4, -0.5)  # a tie goes to the later step
    assert not S.record_score(hist, 5, float("nan"))
    assert hist["val_step"] == [1, 2, 3, 4, 5]
    assert (hist["best_step"], hist["best_score"]) == (4, -0.5)
    assert math.isnan(hist["val_score"][-1])


def _blob(scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.zeros((16, 16, 16), bool)
    mask[3:13, 3:13, 3:13] = True
    x = np.where(mask, scale * rng.normal(size=mask.shape), -1.0).astype(np.float32)
    return x, mask


def test_checkpoint_selection_scores_the_harmonized_held_out_images():
    volumes = [_blob(1.0, 0), _blob(1.0, 1), _blob(3.0, 2), _blob(3.0, 3)]
    sites = np.array(["ref", "ref", "a", "a"])
    sel = S.CheckpointSelection(volumes, sites, [2, 3])
    sel.fit_reference([0, 1])
    baseline = sel.score(None)  # the unharmonized images: far from the reference
    fixed = sel.score(lambda x, mask: np.where(mask, x / 3.0, -1.0))
    assert fixed > baseline
    assert baseline == pytest.approx(
        -np.mean([sel.site_distance.distance(*volumes[i]) for i in (2, 3)])
    )


def test_checkpoint_selection_calls_a_user_scoring():
    volumes = [_blob(1.0, 0), _blob(3.0, 1), _blob(3.0, 2)]
    sites = np.array(["ref", "a", "b"])
    seen = {}

    def scoring(harmonize, vols, labels):
        seen["labels"] = list(labels)
        return float(np.mean([harmonize(x, m)[m].std() for x, m in vols]))

    sel = S.CheckpointSelection(volumes, sites, [1, 2], scoring=scoring)
    assert sel.score(lambda x, mask: x / 3.0) == pytest.approx(sel.score(None) / 3.0)
    assert seen["labels"] == ["a", "b"]

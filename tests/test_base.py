"""harmonix.base helpers used by the method modules (the contract: tests/test_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest

from harmonix.intensity._voxelstats import brain_values
from harmonix.intensity.landmarks import compute_landmarks
from harmonix.intensity.whitestripe import whitestripe_stats


def test_brain_values_default_brain_and_dtypes():
    img = np.zeros((3, 3, 3), np.int16)
    img[1, 1, :] = [5, 7, 9]
    values, brain = brain_values(img)
    assert values.tolist() == [5, 7, 9] and values.dtype == np.float32
    assert brain.sum() == 3 and brain[1, 1].all()
    values, _ = brain_values(img.astype(np.float64), img > 6)
    assert values.tolist() == [7, 9] and values.dtype == np.float64  # float64 kept


@pytest.mark.parametrize("func", [brain_values, compute_landmarks, whitestripe_stats])
def test_functions_taking_data_and_brain_refuse_bad_brains(func):
    img = np.ones((4, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"brain mask shape \(4, 4\) differs"):
        func(img, np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="no brain voxels"):
        func(img, np.zeros((4, 4, 4), bool))
    with pytest.raises(ValueError, match="no brain voxels"):
        func(np.zeros((4, 4, 4), np.float32))

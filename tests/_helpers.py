"""Support shared by several test modules (import it as ``from _helpers import ...``).

Test modules import what they share from here, never from each other or from conftest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

import harmonix
from harmonix.base import BaseHarmonizer
from harmonix.datasets import MultisiteDataset, make_multisite

N_SITES = 3
N_SUBJECTS = 3
SHAPE = (12, 14, 12)


def make_tiny_images(
    shape=SHAPE, n_subjects=N_SUBJECTS, n_sites=N_SITES, seed=0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Blob-shaped 'brains' with per-site gain/offset; background exactly 0.

    Returns imgs (n, i, j, k) float32, sites, ages, subjects (site-major order).
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    brain = radius < 0.8
    anat = [
        (1.0 + 0.5 * np.cos(3 * radius + s) + 0.1 * rng.standard_normal(shape)) * brain
        for s in range(n_subjects)
    ]
    imgs, sites, ages, subjects = [], [], [], []
    for k in range(n_sites):
        gain, offset = 1.0 + 0.3 * k, 0.2 * k
        for s in range(n_subjects):
            img = (gain * anat[s] + offset) * brain + 0.02 * rng.standard_normal(shape) * brain
            imgs.append(np.where(brain, np.abs(img) + 0.05, 0.0))
            sites.append(f"site{k}")
            ages.append(30.0 + 10 * s)
            subjects.append(f"sub{s}")
    return (
        np.stack(imgs).astype(np.float32),
        np.array(sites),
        np.array(ages),
        np.array(subjects),
    )


#: Settings that make each method fast enough for the contract and bad-input suites.
FAST_PARAMS: dict[str, dict] = {
    "IGUANeHarmonizer": {
        "n_epochs": 1,
        "steps_per_epoch": 1,
        "base_width": 2,
        "random_state": 0,
        "voxel_size": 2.0,  # the tiny images' (and their NIfTI files'): shift_mm needs it
    },
}

#: Every harmonizer class :mod:`harmonix` exports; methods added later are picked up here.
HARMONIZERS = sorted(
    (
        obj
        for name in harmonix.__all__
        if isinstance(obj := getattr(harmonix, name), type)
        and issubclass(obj, BaseHarmonizer)
        and obj is not BaseHarmonizer
    ),
    key=lambda c: c.__name__,
)


def make(cls: type, **extra) -> BaseHarmonizer:
    """An instance of ``cls`` with its fast test settings (and ``extra`` parameters)."""
    return cls(**{**FAST_PARAMS.get(cls.__name__, {}), **extra})


def transform_kwargs(cls: type, sites, ages) -> dict:
    """The metadata ``cls.transform`` needs: sites and ages for methods that model sites."""
    return {"sites": sites, "ages": ages} if cls._needs_sites else {}


def rel_diff(a, b) -> float:
    """Largest absolute difference of ``a`` from ``b``, relative to ``b``'s largest value."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def make_feature_study(n_per=(30, 40, 50), n_features=40, seed=0, confounded=True):
    """A table of features with site effects and age, sex and diagnosis effects.

    Diagnosis prevalence differs between sites (10 %, 40 %, 70 % when ``confounded``).
    Returns X (n, n_features), sites, covariates (age, sex, diagnosis as strings).
    """
    rng = np.random.default_rng(seed)
    labels = [f"s{k}" for k in range(len(n_per))]
    sites = np.repeat(labels, n_per)
    n = len(sites)
    prevalence = np.repeat([0.1, 0.4, 0.7] if confounded else [0.4] * 3, n_per)
    dx = np.where(rng.random(n) < prevalence, "AD", "CN")
    sex = rng.choice(["F", "M"], n)
    age = rng.uniform(20, 80, n)
    base = rng.uniform(500, 1500, n_features)
    X = (
        base
        + np.outer(age - 50, rng.normal(-2, 1, n_features))
        + np.outer(sex == "M", rng.normal(30, 10, n_features))
        + np.outer(dx == "AD", rng.normal(-60, 20, n_features))
    )
    for k, lab in enumerate(labels):
        idx = sites == lab
        gamma = rng.normal(50 * k, 20, n_features)
        delta = rng.uniform(0.6, 1.6, n_features)
        X[idx] += gamma + delta * rng.normal(0, 25, (idx.sum(), n_features))
    cov = pd.DataFrame({"age": age, "sex": sex, "diagnosis": dx})
    return X, sites, cov


def make_own_subjects(
    n_subjects: int, random_state: int, diagnosis_prevalence=(0.1, 0.7, 0.4)
) -> MultisiteDataset:
    """Three sites at 4 mm that scan subjects of their own (``traveling=False``).

    With the default prevalence of patients per site (10 %, 70 %, 40 %) the diagnosis is
    confounded with the site; ``diagnosis_prevalence=None`` gives the same subjects without
    diagnosis and sex.
    """
    return make_multisite(
        n_subjects=n_subjects,
        n_sites=3,
        resolution=4,
        random_state=random_state,
        diagnosis_prevalence=diagnosis_prevalence,
        traveling=False,
    )

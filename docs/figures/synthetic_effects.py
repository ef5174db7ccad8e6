"""Figures of the synthetic data's site effects, one per effect (docs/user_guide/synthetic_data).

Each effect of :func:`harmonix.datasets.make_multisite`'s preprocessed style is shown alone
on one subject at 2 mm (the benchmarks' grid), using the module's rendering steps directly:

- ``synthetic_bias.png``: residual bias (site component, two subjects' scan components);
- ``synthetic_resolution.png``: slice thickness and in-plane resolution;
- ``synthetic_noise.png``: the SNR rule and noise at the extremes of its range;
- ``synthetic_contrast.png``: contrast and intensity curves of five sites, and one subject
  scanned at those sites with every effect.

Run from the repository root (about a minute); the PNGs are committed next to it::

    python docs/figures/synthetic_effects.py
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from harmonix.datasets import make_multisite
from harmonix.datasets.anatomy import _ORIGIN, _load_anatomy
from harmonix.datasets.sites import (
    _CURVE_XMAX,
    _curve_lut,
    _draw_site,
    _draw_site_preprocessed,
    _grid_snr,
    _render,
    _scan_bias,
)
from harmonix.datasets.subjects import _draw_subject

HERE = pathlib.Path(__file__).resolve().parent
RES = 2
AXIAL, CORONAL = 50, 60  # slice indices at 2 mm


def _volume(anat, subj, vals):
    out = np.zeros(anat.mask.size, np.float32)
    out[subj.flat] = vals
    return out.reshape(anat.mask.shape)


def _show(ax, img, title, **kw):
    ax.imshow(np.rot90(img), cmap=kw.pop("cmap", "gray"), **kw)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _site(anat, seed, **overrides):
    params, log_bias = _draw_site_preprocessed(anat, np.random.default_rng(seed), "s")
    params.update(overrides)
    return params, log_bias, _curve_lut(params)


def bias_figure(anat, subjects) -> None:
    _, log_bias, _ = _site(anat, 4)
    legacy_params, legacy_bias = _draw_site(anat, np.random.default_rng(4), "s")
    fig, axes = plt.subplots(1, 5, figsize=(13, 3.2), layout="constrained")
    kw = {"cmap": "RdBu_r", "vmin": 0.8, "vmax": 1.2}
    _show(
        axes[0],
        np.where(anat.mask, np.exp(log_bias), np.nan)[:, :, AXIAL],
        "site component\n(same for every scan)",
        **kw,
    )
    totals = []
    for k, subj in enumerate(subjects):
        bias, inu = _scan_bias(log_bias, subj, np.random.default_rng(10 + k))
        vol = _volume(anat, subj, bias)
        vol[vol == 0] = np.nan
        totals.append(vol)
        _show(
            axes[1 + k], vol[:, :, AXIAL], f"subject {k}: total bias\n(scan range {inu:.2f})", **kw
        )
    _show(
        axes[3],
        (totals[0] / totals[1])[:, :, AXIAL],
        "subject 0 / subject 1\n(what a site model misses)",
        **kw,
    )
    im = axes[4].imshow(np.rot90(np.where(anat.mask, legacy_bias, np.nan)[:, :, AXIAL]), **kw)
    axes[4].set_title(
        f"legacy: one site field\n(range {legacy_params['inu_range']:.2f})", fontsize=9
    )
    axes[4].axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8, label="multiplicative bias")
    fig.savefig(HERE / "synthetic_bias.png", dpi=90)
    plt.close(fig)


def resolution_figure(anat, subj) -> None:
    params, _, lut = _site(anat, 0)
    cases = [
        ("1 x 1 x 1 mm", [1.0, 1.0, 1.0]),
        ("1 x 1 x 3 mm slices (axial)", [1.0, 1.0, 3.0]),
        ("1.4 x 1.4 mm in-plane, 1 mm", [1.4, 1.4, 1.0]),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.4), layout="constrained")
    imgs = []
    for ax, (title, voxel) in zip(axes, cases):
        p = dict(params, blur_sigma_mm=[0.5 * v for v in voxel])
        img = _volume(anat, subj, _render(subj, p, lut, RES, None, None))
        _show(ax, img[20:72, CORONAL, 30:82], f"{title}\nsigma = {[0.5 * v for v in voxel]} mm")
        imgs.append((title, img))
    diff = imgs[1][1] - imgs[0][1]
    lim = np.percentile(np.abs(diff), 99.5)
    _show(
        axes[3],
        diff[20:72, CORONAL, 30:82],
        "3 mm slices - 1 mm\n(lost along z only)",
        cmap="RdBu_r",
        vmin=-lim,
        vmax=lim,
    )
    z = np.arange(anat.mask.shape[2]) * RES + _ORIGIN[2]
    for title, img in imgs:
        axes[4].plot(z, img[45, CORONAL, :], label=title)
    axes[4].set_xlim(0, 70)
    axes[4].set_xlabel("z (mm), midline of the coronal slice")
    axes[4].set_title("profile along the slice axis", fontsize=9)
    axes[4].legend(fontsize=7)
    fig.savefig(HERE / "synthetic_resolution.png", dpi=90)
    plt.close(fig)


def noise_figure(anat, subj) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    thickness = np.linspace(1.0, 3.0, 50)
    for res, style in ((1, ":"), (2, "-"), (4, "--")):
        for a, colour in ((0.8, "C0"), (1.4, "C1")):
            snr = [_grid_snr(18.5, [a, a, t], res) for t in thickness]
            axes[0].plot(
                thickness, snr, style, color=colour, label=f"{res} mm grid, {a} mm in-plane"
            )
    axes[0].set_xlabel("slice thickness (mm)")
    axes[0].set_ylabel("WM SNR on the grid (snr_wm = 18.5)")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[0].set_title("SNR: linear in the acquisition voxel, then averaging", fontsize=9)
    params, _, lut = _site(anat, 0, blur_sigma_mm=[0.5, 0.5, 0.5], scale=1000.0)
    for ax, (snr1, voxel) in zip(axes[1:], ((13.0, [0.8, 0.8, 1.0]), (24.0, [1.4, 1.4, 3.0]))):
        snr = _grid_snr(snr1, voxel, RES)
        p = dict(params, noise_sigma=1.0 / snr)
        img = _volume(anat, subj, _render(subj, p, lut, RES, None, np.random.default_rng(0)))
        title = f"snr_wm {snr1:g}, voxel {voxel} mm: grid SNR {snr:.0f}"
        _show(ax, img[15:75, 20:95, AXIAL], title, vmin=0, vmax=1300)
    fig.savefig(HERE / "synthetic_noise.png", dpi=90)
    plt.close(fig)


def contrast_figure() -> None:
    ds = make_multisite(1, 5, resolution=RES, random_state=0)
    fig, axes = plt.subplots(1, 6, figsize=(15, 3.4), layout="constrained")
    xs = np.linspace(0.0, 1.4, 200)
    for p in ds.site_params:
        lut = _curve_lut(p)
        axes[0].plot(
            xs, np.interp(xs, np.linspace(0, _CURVE_XMAX, lut.size), lut), label=p["name"]
        )
    axes[0].set_xlabel("tissue model WM + r_gm GM + r_csf CSF")
    axes[0].set_ylabel("intensity (WM = 1)")
    axes[0].legend(fontsize=7)
    axes[0].set_title("intensity curves", fontsize=9)
    for s, ax in enumerate(axes[1:]):
        p = ds.site_params[s]
        img = ds.imgs[s][:, :, AXIAL]
        _show(
            ax,
            img,
            f"{p['name']}: GM/WM {p['gm_wm']:.2f}\nvoxel "
            + "x".join(f"{v:.1f}" for v in p["voxel_mm"]),
            vmax=np.percentile(img, 99.5),
        )
    fig.savefig(HERE / "synthetic_contrast.png", dpi=90)
    plt.close(fig)


def main() -> None:
    anat = _load_anatomy(RES)
    subjects = [_draw_subject(anat, np.random.default_rng(s), 50.0) for s in (0, 1)]
    bias_figure(anat, subjects)
    resolution_figure(anat, subjects[0])
    noise_figure(anat, subjects[0])
    contrast_figure()


if __name__ == "__main__":
    main()

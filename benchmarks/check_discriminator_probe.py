"""Can IGUANe's discriminator see the sites of 2 mm preprocessed-style images at all?

A supervised probe for issue 23. In the 2 mm trainings (``iguane_learning_2mm.md``) the
discriminators stayed at chance. Here one ``PatchDiscriminator3D`` is trained alone on
whole volumes to score reference-site images 1 and source-site images 0 (the LSGAN
targets of training, the source images as an identity generator leaves them). The images
are prepared as IGUANe prepares them: per-site histogram normalization, median scale,
background 0. It is then scored on held-out subjects.

Three variants are compared: the published architecture, with MAD instance
normalization after its second and third convolutions; the same network without them
(instance normalization removes each volume's channel means and scales, and global
contrast is what per-site histogram maps leave of a site); and a candidate branch that
reads only global statistics (the first convolution, each channel's mean and standard
deviation over the volume, a linear score).

Run from the repository root (about 5 min on 2 cores)::

    python benchmarks/check_discriminator_probe.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _helpers import common
from torch import nn

from harmonix.datasets import make_multisite
from harmonix.iguane.inputs.normalization import InputNormalizer, image_landmarks
from harmonix.iguane.inputs.volumes import network_input, prepare_volume
from harmonix.iguane.model.networks import PatchDiscriminator3D

N_SUBJECTS, N_TEST = 8, 2  # the last N_TEST subjects are held out


def prepared(seed: int) -> tuple[list[torch.Tensor], np.ndarray, np.ndarray, str]:
    """Network inputs of sites 0-3 (site4 left out), their sites and subjects."""
    ds = make_multisite(N_SUBJECTS, 5, resolution=2, style="preprocessed", random_state=seed)
    keep = np.flatnonzero(ds.sites != ds.site_names[-1])
    sites, subjects = ds.sites[keep], ds.subjects[keep]
    train = np.isin(subjects, np.unique(subjects)[:-N_TEST])
    marks = np.stack([image_landmarks(ds.imgs[i]) for i in keep])
    norm = InputNormalizer.fit("histogram", marks[train], sites[train], ds.reference_site)
    xs = []
    for k, i in enumerate(keep):
        mapped, median = norm(ds.imgs[i], norm.known_landmarks(sites[k]))
        vol = prepare_volume(mapped, median)
        x, mask = torch.from_numpy(vol.x), torch.from_numpy(vol.mask)
        xs.append(network_input(x, mask)[None, None])
    return xs, sites, train, ds.reference_site


def without_instance_norm(d: PatchDiscriminator3D) -> PatchDiscriminator3D:
    d.norm2, d.norm3 = nn.Identity(), nn.Identity()
    return d


class GlobalStatistics(nn.Module):
    """A candidate discriminator branch: the first convolution of the published one,
    then each channel's brain-wide mean and standard deviation, then a linear score."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, width, 4, stride=2, bias=False)
        self.score = nn.Linear(2 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.leaky_relu(self.conv(x), 0.2)
        stats = torch.cat([h.mean(dim=(2, 3, 4)), h.std(dim=(2, 3, 4))], dim=1)
        return self.score(stats)


def probe(xs, sites, train, reference, variant: str, steps: int, seed: int) -> dict:
    torch.manual_seed(seed)
    d = GlobalStatistics(16) if variant == "global statistics" else PatchDiscriminator3D(16)
    if variant == "no instance norm":
        d = without_instance_norm(d)
    opt = torch.optim.Adam(d.parameters(), lr=5e-4, betas=(0.5, 0.999))
    rng = np.random.default_rng(seed)
    ref = np.flatnonzero(train & (sites == reference))
    src = np.flatnonzero(train & (sites != reference))
    losses, t0 = [], time.perf_counter()
    for _ in range(steps):
        r, s = xs[int(rng.choice(ref))], xs[int(rng.choice(src))]
        loss = ((d(r) - 1) ** 2).mean() + (d(s) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        score = np.array([float(d(xs[i]).mean()) for i in range(len(xs))])
    test = ~train
    is_ref = sites == reference
    threshold = 0.5
    correct = (score[test] > threshold) == is_ref[test]
    return {
        "variant": variant,
        "loss": [float(np.mean(losses[k : k + 25])) for k in range(0, steps, 25)],
        "ref_score": float(score[test & is_ref].mean()),
        "src_score": float(score[test & ~is_ref].mean()),
        "balanced_accuracy": float(
            0.5 * (correct[is_ref[test]].mean() + correct[~is_ref[test]].mean())
        ),
        "seconds": seconds,
    }


def main() -> None:
    p = common.script_parser(__doc__, "discriminator_probe.md")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load = common.load_now()
    xs, sites, train, reference = prepared(args.seed)
    rows = [
        probe(xs, sites, train, reference, v, args.steps, args.seed)
        for v in ("published (MAD instance norm)", "no instance norm", "global statistics")
    ]
    lines = [
        "# Can the discriminator see the sites at 2 mm? A supervised probe",
        "",
        f"Command: `{common.command_line()}`  ",
        f"`make_multisite({N_SUBJECTS}, 5, resolution=2, style='preprocessed', "
        f"random_state={args.seed})`, sites 0-3 (reference {reference}); "
        f"{N_SUBJECTS - N_TEST} subjects to train, {N_TEST} held out; "
        f"`PatchDiscriminator3D(16)`, Adam 5e-4 (beta1 0.5), {args.steps} steps of one "
        f"reference and one source volume (whole, 2 mm); {args.threads} threads, load "
        f"{load[0]:.2f} at the start.",
        "",
        "| discriminator | LSGAN loss per 25 steps | held-out mean score, reference / "
        "source | balanced accuracy (score > 0.5) | seconds |",
        "|---|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {', '.join(f'{x:.3f}' for x in r['loss'])} | "
            f"{r['ref_score']:.3f} / {r['src_score']:.3f} | "
            f"{r['balanced_accuracy']:.2f} | {r['seconds']:.0f} |"
        )
    lines += [
        "",
        "Chance: loss 0.5 (both scores 0.5), balanced accuracy 0.50.",
    ]
    common.write_results(args.out, lines)


if __name__ == "__main__":
    main()

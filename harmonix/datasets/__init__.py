"""Synthetic multi-site traveling-subject data built from real anatomy.

No multi-site structural MRI data set can be downloaded at run time, so tests, tutorials
and benchmarks use images simulated from the ICBM152 2009a template bundled with nilearn
(no network access is needed). Every subject is "scanned" at every site (traveling
subjects), so the ideal harmonized image of each scan is known: the same subject rendered
clean at the reference site.

Simulation recipe
-----------------
Anatomy (once per resolution, cached in memory):
    the ICBM152 T1, GM, WM and brain-mask images are smoothed (anti-aliasing) and resampled
    to the FSL MNI grids; CSF is ``clip(mask - GM - WM, 0, 1)`` and the *texture* is the part
    of the T1 template not explained by a linear tissue model (deep grey matter, vessels...),
    expressed in units of the WM intensity.

Subjects (computed once per subject, reused at every site):
    1. a random affine (each matrix entry within +/- 3 %) and a smooth random displacement
       (cubic B-spline on a 7x7x7 control grid, RMS 1-2.5 mm, evaluated with separable
       tensor products) warp the tissue, texture and mask maps (trilinear interpolation);
    2. ageing: a fraction ``clip(0.004 * p * (age - 20) * w(x), 0, 0.5)`` of the GM turns
       into CSF, where ``w`` is a smooth weight of the template position (about 0.6 in the
       occipital to 1.4 in the frontal lobe) and ``p ~ U(0.75, 1.25)`` the subject's
       ageing pace; the GM volume therefore falls with age, which a harmonization must keep.

Sites, default ``style="preprocessed"``: scans as a harmonization method receives them,
after the standard preprocessing (N4 bias correction, registration to MNI, resampling to
the grid). One seeded parameter set per site; contrast, SNR and scale lie within the range
of the ABIDE sites' MRIQC image quality metrics (GM/WM 0.58-0.85, CSF/WM 0.25-0.44, WM SNR
13-24):
    1. tissue contrast ``I = WM + r_gm * GM + r_csf * CSF + g * texture`` (``g`` 0.6-1.0);
    2. a random monotone nonlinear intensity curve (PCHIP through 7 increasing knots that
       keep pure CSF, GM and WM at ``r_csf``, ``r_gm`` and 1);
    3. residual bias ``exp(b_site(x) + b_scan(x))``, what N4 leaves: a weak site component
       (cubic B-spline, 4x4x4 control points, 5-95th percentile range of ``exp(b_site)``
       inside the brain 0.02-0.10: the coil's profile that every N4 run under-corrects
       alike) and a scan-specific component drawn anew for every scan, so two subjects of
       one site differ (6x6x6 control points, finer than N4's model, range 0.05-0.15,
       recorded in ``MultisiteDataset.residual_inu``);
    4. resolution: an acquisition voxel of ``a x a x t`` mm, in-plane pixel ``a`` 0.8-1.4
       mm (in-plane sharpness) and slice thickness ``t`` 1-3 mm along a random axis (the
       slice direction after registration). Each axis is blurred by a Gaussian of sigma
       ``w / 2`` mm for voxel width ``w`` (box profile of the voxel, variance ``w**2 / 12``,
       then linear interpolation between samples ``w`` apart, variance ``w**2 / 6``). The
       blur is in mm, so it spans more voxels at 1 and 2 mm than at 4 mm;
    5. Rician noise at the WM SNR of the voxel: ``snr_wm`` (13-24) is the SNR of a 1 mm3
       voxel; SNR is linear in the acquisition voxel volume ``V = a**2 t`` (thick slices
       collect more signal) and resampling onto grid voxels of volume ``r**3 > V`` averages
       ``r**3 / V`` of them, so the grid SNR is ``snr_wm * sqrt(V * r**3)`` (``snr_wm * V``
       on a grid finer than the acquisition): 10-140 at 1 mm, 30-165 at 2 mm, 80-470 at 4 mm;
    6. a global scale (WM mapped to 255-4095, log-uniform) and rounding to integers; voxels
       inside the subject's brain are at least 1 and the background is exactly 0.

Sites, ``style="legacy"``: the first simulation, kept bit for bit for the models and
results made with it (``MultisiteDataset.residual_inu`` is 0). Steps 1, 2 and 6 as above;
3. one multiplicative bias field per site ``exp(a * s(x))`` (4x4x4 control points), its
5-95th percentile range the ABIDE sites' INU range before correction (0.2-0.63), the same
for every scan of the site; 4. anisotropic Gaussian blur, sigma 0.3-1.2 mm per axis;
5. Rician noise with the WM SNR 13-24 given for 1 mm voxels, its standard deviation divided
by ``resolution ** 1.5`` on coarser grids.

The ground truth of each image is its subject rendered at the reference site without bias
field and noise (reference contrast, curve, blur and scale; not rounded). The subjects
(anatomy, ages, GM maps and volumes) do not depend on the style.

Modules
-------
``anatomy``
    the template tissue maps on the FSL MNI152 grids;
``fields``
    smooth random fields (cubic B-splines) for deformations and bias;
``biology``
    ageing, disease and sex effects, the disease region, sex and diagnosis draws;
``subjects``
    a subject: the template deformed and aged;
``sites``
    the two site styles and the rendering of a subject at a site;
``multisite``
    :class:`MultisiteDataset` and :func:`make_multisite`, which put them together;
``export``
    :func:`write_nifti_dataset`.
"""

from harmonix.datasets.biology import disease_region
from harmonix.datasets.export import write_nifti_dataset
from harmonix.datasets.multisite import MultisiteDataset, make_multisite

__all__ = ["MultisiteDataset", "disease_region", "make_multisite", "write_nifti_dataset"]

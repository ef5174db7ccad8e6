"""harmonix: harmonization of multi-site structural brain MR images.

One scikit-learn-style contract for every method::

    h = HistogramMatchingHarmonizer(reference_site="site0").fit(imgs, sites, ages)
    harmonized = h.transform(new_imgs)
"""

from harmonix._version import __version__
from harmonix.base import BaseHarmonizer, IdentityHarmonizer
from harmonix.combat import ComBatHarmonizer
from harmonix.datasets import MultisiteDataset, make_multisite, write_nifti_dataset
from harmonix.iguane.estimator import IGUANeHarmonizer
from harmonix.intensity.histogram_matching import HistogramMatchingHarmonizer
from harmonix.intensity.whitestripe import WhiteStripeHarmonizer
from harmonix.pipeline import HarmonizerStep

__all__ = [
    "BaseHarmonizer",
    "ComBatHarmonizer",
    "HarmonizerStep",
    "HistogramMatchingHarmonizer",
    "IGUANeHarmonizer",
    "IdentityHarmonizer",
    "MultisiteDataset",
    "WhiteStripeHarmonizer",
    "__version__",
    "make_multisite",
    "write_nifti_dataset",
]

"""BIDS in, BIDS derivatives out.

- :func:`bids_manifest` / :func:`write_bids_manifest` list a BIDS dataset's T1w images
  with their site (a participants/sessions column or the scanner in their sidecars),
  entities and covariates, as a manifest every harmonix command reads (needs pybids:
  ``pip install "harmonix[bids]"``);
- :func:`transform_to_bids` (:func:`transform_manifest_to_bids` for a manifest's images),
  :func:`preprocess_to_bids`, :func:`to_native_bids` and :func:`derivatives_to_native`
  write BIDS derivatives named for their sources, with sidecars tracing them back
  (``--bids-out`` of ``transform``, ``preprocess`` and ``to-native``);
- :func:`write_bids_dataset` writes the synthetic traveling-subject data as a BIDS dataset.
"""

from harmonix.bids.derivatives import (
    DerivativeDataset,
    harmonized_path,
    native_path,
    preprocessed_paths,
)
from harmonix.bids.manifest import (
    DEFAULT_SITE_FIELDS,
    bids_manifest,
    manifest_entities,
    write_bids_manifest,
)
from harmonix.bids.names import build_name, parse_name
from harmonix.bids.native import derivatives_to_native, to_native_bids
from harmonix.bids.preprocess import preprocess_to_bids
from harmonix.bids.synthetic import write_bids_dataset
from harmonix.bids.transform import transform_manifest_to_bids, transform_to_bids

__all__ = [
    "DEFAULT_SITE_FIELDS",
    "DerivativeDataset",
    "bids_manifest",
    "derivatives_to_native",
    "build_name",
    "harmonized_path",
    "manifest_entities",
    "native_path",
    "parse_name",
    "preprocess_to_bids",
    "preprocessed_paths",
    "to_native_bids",
    "transform_manifest_to_bids",
    "transform_to_bids",
    "write_bids_dataset",
    "write_bids_manifest",
]

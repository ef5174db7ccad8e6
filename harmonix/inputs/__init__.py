"""What users give a harmonizer and how it is checked, shared by every method.

- :mod:`harmonix.inputs.labels`: site labels (what a label is, when two name one site);
- :mod:`harmonix.inputs.covariates`: covariates and ages (checked, described, designed);
- :mod:`harmonix.inputs.tables`: tables of features (subjects x features);
- :mod:`harmonix.inputs.grids`: the training grid and the check of new images against it;
- :mod:`harmonix.inputs.background`: the background rule (0 outside the brain) and masks;
- :mod:`harmonix.inputs.site_check`: whether a labelled group is the fitted site of that
  name;
- ``_reading``: how a harmonizer reads its inputs (the one-call ``Inputs`` bundle);
- ``_digest``: a cheap digest of a sequence of images.
"""

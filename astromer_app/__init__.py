"""The Astromer application: the ``astromer`` command line, the demo, plots, checkpoint conversion and releases.

The top layer of the project: it uses the training library (``astromer_train``), the survey data
(``hub_datasets``), the model set (``modeling_astromer``) and the kernels (``astromer_kernels``); none of them
imports it.
"""

"""The Astromer application: the ``astromer`` command line, the demo, plots, checkpoint conversion and releases.

The top layer of the project: it uses the training library (``astromer_train``), the survey data
(``hub_datasets``), the model set (``modeling_astromer``) and the kernels (``astromer_kernels``); none of them
imports it.

Importing it imports :mod:`astromer_train` first, which lets idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``)
before torch loads, unless the user chose a policy: the ``astromer`` command keeps its speed on shared cores.
"""

import astromer_train  # noqa: F401  (first: sets the OpenMP wait policy before torch is loaded)

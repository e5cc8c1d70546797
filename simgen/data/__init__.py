"""Data: simulators and the files they fill.

The first layer of the pipeline. :mod:`~simgen.data.simulator` defines the ``Simulator``
interface and the registry; :mod:`~simgen.data.store` the HDF5 data schema;
:mod:`~simgen.data.simulation` runs a simulator into a data file (with
:mod:`~simgen.data.tasks`, :mod:`~simgen.data.executors`, :mod:`~simgen.data.journal` and
:mod:`~simgen.data.writer`); :mod:`~simgen.data.merging` joins data files;
:mod:`~simgen.data.samples` writes the files of samples and densities. Nothing here imports
from the models, training or inference layers.
"""

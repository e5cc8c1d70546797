"""Training: :func:`simgen.fit` and what it needs.

:mod:`~simgen.train.config` (the training settings, devices and threads),
:mod:`~simgen.train.batches` (standardised batches from memory or streamed from HDF5),
:mod:`~simgen.train.distributed` (data-parallel training under ``torchrun``) and
:mod:`~simgen.train.loop` (the one loop that trains every family and writes the model file).
"""

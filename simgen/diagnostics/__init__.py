"""Diagnostics: how good an emulator and its posterior are.

:mod:`~simgen.diagnostics.metrics` (C2ST, SBC ranks, expected coverage),
:mod:`~simgen.diagnostics.report` (:func:`simgen.check`, the report of ``simgen check``) and
:mod:`~simgen.diagnostics.plots` (the figures).
"""

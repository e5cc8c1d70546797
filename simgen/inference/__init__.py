r"""Inference with a learned likelihood: :class:`simgen.Posterior` over
:math:`p(\theta \mid x_{obs}) \propto p(x_{obs} \mid \theta)\, p(\theta)`.

:mod:`~simgen.inference.posterior` (the posterior and its sampling),
:mod:`~simgen.inference.mcmc` (vectorised slice sampling and HMC) and
:mod:`~simgen.inference.metropolis` (emulated samples made exact with a simulator's own
unnormalised density).
"""

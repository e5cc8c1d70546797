r"""Inference with a learned likelihood: :class:`simgen.Posterior` over
:math:`p(\theta \mid x_{obs}) \propto p(x_{obs} \mid \theta)\, p(\theta)`.

:mod:`~simgen.inference.posterior` (the posterior), :mod:`~simgen.inference.engine` (how it is
sampled: :mod:`~simgen.inference.importance` and :mod:`~simgen.inference.adaptive` importance
sampling from the amortised proposal, :mod:`~simgen.inference.smc` and
:mod:`~simgen.inference.chains` as fallbacks, on :mod:`~simgen.inference.mcmc`'s vectorised
slice sampling and HMC) and :mod:`~simgen.inference.metropolis` (emulated samples made exact
with a simulator's own unnormalised density).
"""

r"""Models: conditional generative models of :math:`p(x \mid \theta)` in standardised
coordinates.

Network blocks (:mod:`~simgen.models.nn`, :mod:`~simgen.models.conv`,
:mod:`~simgen.models.unet`, :mod:`~simgen.models.transforms`) and the families that use them:
the flow baseline (:mod:`~simgen.models.flow`, :mod:`~simgen.models.spectral`,
:mod:`~simgen.models.heteroscedastic`), the VAE (:mod:`~simgen.models.vae`) and the diffusion
model (:mod:`~simgen.models.diffusion`, :mod:`~simgen.models.ddpm`). Every family follows
:class:`simgen.models.family.Family`, the contract that training, the emulator, the posterior
and the diagnostics rely on. Models know nothing of files, training loops or simulators.
"""

"""simgen's spline and neural spline flow against zuko's: the same transform, the same files."""

import torch
import zuko
from zuko.transforms import MonotonicRQSTransform

from simgen.models.spline import NSF, Spline


def test_spline_is_zukos_spline():
    """Knots equal zuko's for raw parameters far beyond the soft bound (the exponentials
    without a maximum subtracted stay finite); values and log-Jacobians inside and outside
    the bound are as accurate as zuko's in float32 (both against zuko's in float64: steep
    bins amplify the knots' rounding, which the two round differently), inverses too."""
    gen = torch.Generator().manual_seed(0)
    for scale in (30.0, 3.0):
        widths, heights = scale * torch.randn(2, 500, 3, 8, generator=gen)
        derivatives = scale * torch.randn(500, 3, 7, generator=gen)
        ours = Spline(widths, heights, derivatives)
        zukos = MonotonicRQSTransform(widths, heights, derivatives)
        for name in ("horizontal", "vertical", "derivatives"):
            torch.testing.assert_close(getattr(ours, name), getattr(zukos, name))
    exact = MonotonicRQSTransform(widths.double(), heights.double(), derivatives.double())
    x = 4 * torch.randn(500, 3, generator=gen)  # the bound is 5
    y_e, ladj_e = exact.call_and_ladj(x.double())
    y, ladj = ours.call_and_ladj(x)
    y_z, ladj_z = zukos.call_and_ladj(x)
    for value, value_z, reference in ((y, y_z, y_e), (ladj, ladj_z, ladj_e)):
        error = (value.double() - reference).abs().max()
        assert error <= 2 * (value_z.double() - reference).abs().max() + 1e-6, error
    # the inverse of a steep bin loses digits in float32: ours as few as zuko's
    error, error_z = (ours.inv(y) - x).abs().max(), (zukos.inv(y_z) - x).abs().max()
    assert error <= 2 * error_z + 1e-5, (error, error_z)


def test_flow_loads_zukos_parameters_and_gives_its_density():
    """A zuko NSF's parameters load into :class:`NSF` (and back), with the same log density."""
    torch.manual_seed(0)
    theirs = zuko.flows.NSF(3, context=2, transforms=2, hidden_features=(16,), passes=2)
    ours = NSF(3, context=2, transforms=2, hidden_features=(16,), passes=2)
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x, c = torch.randn(100, 3), torch.randn(100, 2)
    with torch.no_grad():
        torch.testing.assert_close(ours(c).log_prob(x), theirs(c).log_prob(x))

"""Linear (incl. a materialised LazyLinear) and Bilinear inside small models, both directions."""
import numpy as np

from layer_models import Case, between, bias_kw, cases_param, net, nn, run_case


def linear(bias):
    return lambda fw: nn(fw).Linear(8, 8, **bias_kw(fw, bias))


def bilinear(bias):
    def forward(self, x):
        return self.post(self.bil(self.pre(x), x))

    return lambda fw: net(fw, forward, pre=lambda f: nn(f).Linear(6, 4),
                          bil=lambda f: nn(f).Bilinear(4, 6, 5, **bias_kw(f, bias)),
                          post=lambda f: nn(f).Linear(5, 3))


def lazy_or_linear(fw):
    """torch: a LazyLinear materialised by one forward (it becomes a Linear); paddle: a Linear."""
    if fw == "torch":
        import torch

        lazy = torch.nn.LazyLinear(8)
        lazy(torch.zeros(1, 8))
        assert type(lazy).__name__ == "Linear"
        return lazy
    return nn(fw).Linear(8, 8)


CASES = [Case(f"linear-bias{b}", between(linear(b), 6, 3, d_mid=8), [(4, 6)], ("Linear", "Linear"))
         for b in (True, False)]
CASES.append(Case("lazylinear-materialised", between(lazy_or_linear, 6, 3, d_mid=8), [(4, 6)], ("Linear", "Linear")))
CASES += [Case(f"bilinear-bias{b}", bilinear(b), [(4, 6)], ("Bilinear", "Bilinear")) for b in (True, False)]


@cases_param(CASES)
def test_linear_family(case, src, dst):
    run_case(case, src, dst)


def test_square_linear_is_transposed_by_class_not_shape():
    report, a, b = run_case(CASES[0], "torch", "paddle")
    np.testing.assert_array_equal(a[1].weight.detach().numpy().T, b[1].weight.numpy())

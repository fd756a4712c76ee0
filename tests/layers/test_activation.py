"""PReLU, a single shared slope and one per channel, both directions."""
from layer_models import Case, between, cases_param, nn, randomize, run_case


def prelu(n):
    # random slopes, so a slope that was not transferred shows in the outputs
    return lambda fw: randomize(fw, nn(fw).PReLU(n, 0.25))


CASES = [Case(f"prelu-{n}", between(prelu(n), 6, 3, d_mid=8), [(4, 6)], ("PReLU", "PReLU")) for n in (1, 8)]


@cases_param(CASES)
def test_prelu(case, src, dst):
    run_case(case, src, dst)

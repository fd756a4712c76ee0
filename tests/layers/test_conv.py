"""Conv1d/2d/3d and ConvTranspose1d/2d/3d over groups, dilation and bias, both directions."""
from layer_models import Case, bias_kw, cases_param, nn, run_case

OPTIONS = {"plain": {}, "groups": {"groups": 2}, "dilation": {"dilation": 2}, "nobias": {"bias": False}}
SPATIAL = {1: (9,), 2: (7, 7), 3: (5, 5, 5)}


def conv(d, transpose, opts):
    def build(fw):
        n = nn(fw)
        if fw == "torch":
            cls = getattr(n, f"ConvTranspose{d}d" if transpose else f"Conv{d}d")
            pre = getattr(n, f"Conv{d}d")
        else:
            cls = getattr(n, f"Conv{d}DTranspose" if transpose else f"Conv{d}D")
            pre = getattr(n, f"Conv{d}D")
        kw = {k: v for k, v in opts.items() if k != "bias"}
        kw.update(bias_kw(fw, opts.get("bias", True)))
        return n.Sequential(pre(2, 4, 1), cls(4, 6, 3, **kw), n.Tanh()).eval()

    return build


CASES = []
for d in (1, 2, 3):
    for transpose in (False, True):
        pair = (f"ConvTranspose{d}d", f"Conv{d}DTranspose") if transpose else (f"Conv{d}d", f"Conv{d}D")
        for name, opts in OPTIONS.items():
            CASES.append(Case(f"{pair[0]}-{name}", conv(d, transpose, opts), [(2, 2) + SPATIAL[d]], pair))


@cases_param(CASES)
def test_conv(case, src, dst):
    run_case(case, src, dst)

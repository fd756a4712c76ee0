"""Issue 15: ``DiffResult.to_html`` writes one self-contained page; a real headless Chromium loads it,
runs its script, and the rendered DOM shows the first divergence (text, chart marker, marked tree row).

Chromium comes from Debian's packages (``apt-get install -y chromium``; .ci/run installs it when
missing). Without it these tests SKIP with that reason; they never pass without a browser.
"""
import html
import re
import shutil
import subprocess

import pytest

import hf_families as H
from helpers import DIRECTION_IDS, DIRECTIONS, SEQ_NAME, deep, inputs_for
from padiff_lite import assign_weight, auto_diff

X = inputs_for([(4, 16)])[0]
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="chromium is not installed (apt-get install -y chromium; "
                                                        ".ci/run installs it): the HTML page cannot be rendered")


def rendered_dom(path, tmp_path) -> str:
    """The page's DOM after its scripts ran, from headless Chromium."""
    argv = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", f"file://{path}"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def element_text(dom: str, element_id: str) -> str:
    m = re.search(rf'<(\w+)[^>]*\bid="{element_id}"[^>]*>(.*?)</\1>', dom, re.S)
    assert m, f"no element #{element_id} in the rendered page"
    return html.unescape(re.sub(r"<[^>]+>", " ", m.group(2)))


def _spoil(model, framework, blocks_name):
    fc1 = getattr(model, blocks_name)[4].fc1
    if framework == "torch":
        import torch

        with torch.no_grad():
            fc1.weight.mul_(1.01)
    else:
        fc1.weight.set_value(fc1.weight.numpy() * 1.01)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_first_divergence_is_shown_in_the_browser(tmp_path, src, dst):
    a, b = deep(src), deep(dst)
    assign_weight(a, b)
    _spoil(b, dst, SEQ_NAME[dst])
    result = auto_diff(a, b, X, auto_init=False)
    base_path, raw_path = f"{SEQ_NAME[src]}.4.fc1", f"{SEQ_NAME[dst]}.4.fc1"
    assert (result.first_diff.base_path, result.first_diff.raw_path) == (base_path, raw_path)
    page = tmp_path / "report.html"
    assert result.to_html(page) == str(page)
    source = page.read_text()
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=", source)  # self-contained: nothing fetched
    dom = rendered_dom(page, tmp_path)
    assert 'data-rendered="yes"' in dom  # the script ran to its end
    assert "MISMATCH" in element_text(dom, "title")
    assert f"base {base_path} (Linear)" in element_text(dom, "first-base")
    assert f"raw  {raw_path} (Linear)" in element_text(dom, "first-raw")
    assert "its inputs agree" in element_text(dom, "first-inputs")
    assert element_text(dom, "first-label").strip() == f"first divergence: {base_path}"
    assert 'id="first-marker"' in dom and dom.count('class="dot-') == len(result.layers)
    row = element_text(dom, "first-divergence-row")
    assert ">>" in row and "fc1 (Linear)" in row and "DIFF" in row
    assert dom.count('id="first-divergence-row"') == 1


def test_hf_port_page_shows_no_divergence_and_the_not_comparable_calls(tmp_path):
    f = H.BY_NAME["gpt_oss"]
    torch_model, paddle_model = f.torch_model(0), f.paddle_model(1)
    bad = auto_diff(torch_model, paddle_model, f.inputs())  # PaddleFormers' eval experts are wrong
    dom = rendered_dom(bad.to_html(tmp_path / "gpt_oss.html"), tmp_path)
    assert "base model.layers.0.mlp.experts (GptOssExperts)" in element_text(dom, "first-base")
    assert dom.count('class="dot-nc"') == len(bad.not_comparable) == 2  # the routers, drawn grey
    assert "not comparable" in element_text(dom, "tree")

    f = H.BY_NAME["llama"]
    good = auto_diff(f.paddle_model(1), f.torch_model(0), f.inputs())
    assert good.ok
    dom = rendered_dom(good.to_html(tmp_path / "llama.html"), tmp_path)
    assert "OK" in element_text(dom, "title")
    assert "none: every compared call agrees" in element_text(dom, "first-divergence")
    assert 'id="first-divergence-row"' not in dom and "final outputs of a different form" in element_text(dom, "notes")


def _stepper(opt):
    def step():
        opt.step()
        opt.zero_grad() if hasattr(opt, "zero_grad") else opt.clear_grad()
    return step


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_training_steps_show_both_losses_and_the_layer_by_step_grid(tmp_path, src, dst):
    from test_training import X as IMAGES, ce, convnet, optimizer

    a, b = convnet(src), convnet(dst)
    good = auto_diff(a, b, IMAGES, loss_fns=(ce(src), ce(dst)),
                     optimizers=(optimizer(src, a, "sgd"), optimizer(dst, b, "sgd")), steps=3)
    assert good.ok
    dom = rendered_dom(good.to_html(tmp_path / "good.html"), tmp_path)
    assert 'data-rendered="yes"' in dom and "every step agrees" in element_text(dom, "first-stage")
    assert dom.count('class="loss-dot-base"') == dom.count('class="loss-dot-raw"') == 3
    assert 'id="loss-base"' in dom and 'id="loss-raw"' in dom
    rows = len({(ld.base_path, ld.call) for ld in good.steps[0].layers})
    assert dom.count('class="cell-ok"') == 3 * rows and 'class="cell-diff"' not in dom
    assert 'id="grid-first"' not in dom

    a, b = convnet(src), convnet(dst)  # the raw optimizer's learning rate differs behind a callable
    bad = auto_diff(a, b, IMAGES, loss_fns=(ce(src), ce(dst)), steps=3,
                    optimizers=(_stepper(optimizer(src, a, "sgd", lr=0.05)), _stepper(optimizer(dst, b, "sgd", lr=0.2))))
    assert (bad.step, bad.stage) == (0, "optimizer")
    dom = rendered_dom(bad.to_html(tmp_path / "bad.html"), tmp_path)
    assert "first difference: step 0, stage optimizer: weight base" in element_text(dom, "first-stage")
    assert 'id="grid-first"' in dom and 'id="loss-first-step"' in dom
    diffs = dom.count('class="cell-diff"')
    assert diffs == sum(not ld.ok for s in bad.steps for ld in s.layers) and diffs > 0  # steps 1 and 2
    title = re.findall(r"<title>step (\d)[^<]*max rel diff", dom)
    assert set(title) == {"0", "1", "2"}


def test_a_forward_divergence_in_training_is_outlined_in_its_cell(tmp_path):
    from test_training import X as IMAGES, ce, convnet, optimizer

    a, b = convnet("torch"), convnet("paddle")
    assign_weight(a, b)
    b[8].bias.set_value(b[8].bias.numpy() + 0.05)
    r = auto_diff(a, b, IMAGES, loss_fns=(ce("torch"), ce("paddle")), auto_init=False, steps=2,
                  optimizers=(optimizer("torch", a, "sgd"), optimizer("paddle", b, "sgd")))
    assert (r.step, r.stage, r.first_diff.base_path) == (0, "forward", "8")
    dom = rendered_dom(r.to_html(tmp_path / "fwd.html"), tmp_path)
    assert "stage forward: layer base 8 (Linear)" in element_text(dom, "first-stage")
    m = re.search(r'<rect[^>]*id="grid-first"[^>]*>', dom)
    assert m and 'height="13"' in m.group(0)  # one cell, not the whole column

"""Real architectures ported the way a user would: torchvision-named torch twins of paddle.vision models,
a GPT-2 block with a fused qkv projection, a partial BERT transfer, train-mode models, custom parameters,
weight norm, and a paddle -> paddle restructured model. Every test compares real outputs, both directions.
"""
from __future__ import annotations

import math

import numpy as np
import paddle
import pytest
import torch
from torch import nn

import paddle.nn as pnn
import paddle.nn.functional as PF

from padiff_lite import TransferError, assign_weight, auto_diff, create_model
from padiff_lite.models import warm_up
from padiff_lite.special_init import Map

from helpers import DIRECTION_IDS, DIRECTIONS, assert_refused, max_abs_diff


# ---------------------------------------------------------------------------------------------
# torch twins written by hand with torchvision's attribute names (torchvision is not installed)

class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TorchResNet18(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 2)
        self.layer2 = self._make_layer(128, 2, 2)
        self.layer3 = self._make_layer(256, 2, 2)
        self.layer4 = self._make_layer(512, 2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _make_divisible(v, divisor=8):
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class Conv2dNormActivation(nn.Sequential):
    def __init__(self, inp, oup, kernel_size=3, stride=1, groups=1):
        super().__init__(nn.Conv2d(inp, oup, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = [Conv2dNormActivation(inp, hidden, kernel_size=1)] if expand_ratio != 1 else []
        layers += [Conv2dNormActivation(hidden, hidden, stride=stride, groups=hidden),  # depthwise
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class TorchMobileNetV2(nn.Module):
    """torchvision's MobileNetV2: no pooling module (F.adaptive_avg_pool2d), paddle has pool2d_avg."""

    def __init__(self, num_classes=10, width_mult=0.5):
        super().__init__()
        setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                   [6, 320, 1, 1]]
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        features = [Conv2dNormActivation(3, cin, stride=2)]
        for t, c, n, s in setting:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(Conv2dNormActivation(cin, last, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


VISION = {
    "resnet18": lambda fw: TorchResNet18() if fw == "torch" else paddle.vision.models.resnet18(num_classes=10),
    "mobilenet_v2": lambda fw: TorchMobileNetV2() if fw == "torch"
    else paddle.vision.models.mobilenet_v2(scale=0.5, num_classes=10),
}


@pytest.mark.parametrize("arch", sorted(VISION))
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_paddle_vision_model_and_its_torchvision_twin(arch, src, dst):
    torch.manual_seed(0)
    paddle.seed(0)
    a, b = VISION[arch](src), VISION[arch](dst)
    warm_up(a, src, (4, 3, 32, 32))  # running statistics away from 0/1, so BatchNorm buffers are tested
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype("float32")
    result = auto_diff(a, b, x, atol=1e-4, rtol=1e-4)
    assert result, str(result)
    assert result.max_abs_diff < 1e-4
    # every tensor was written: BatchNorm buffers included, nothing left over
    report = assign_weight(a, b)
    assert not report.missing and not report.unexpected
    assert report.tensors == len([k for k in b.state_dict() if not k.endswith("num_batches_tracked")])


def test_vision_models_transfer_in_train_mode_and_keep_it():
    a, b = TorchResNet18(), paddle.vision.models.resnet18(num_classes=10)
    warm_up(a, "torch", (4, 3, 32, 32))
    a.train()
    b.train()
    assign_weight(a, b)
    assert a.training and b.training  # modes are not touched by the transfer
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype("float32")
    result = auto_diff(a, b, x, auto_init=False, atol=1e-4, rtol=1e-4)  # compares in eval mode, restores train
    assert result, str(result)
    assert a.training and b.training


# ---------------------------------------------------------------------------------------------
# GPT-2 block: torch fuses q|k|v into one Linear(d, 3d) "c_attn", the paddle port has three Linears

class TorchGPT2Attention(nn.Module):
    def __init__(self, d=32, n_head=4):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in self.c_attn(x).split(d, dim=2))
        att = q @ k.transpose(-2, -1) / math.sqrt(d // self.n_head)
        att = att.masked_fill(~torch.tril(torch.ones(t, t, dtype=torch.bool)), float("-inf")).softmax(-1)
        return self.c_proj((att @ v).transpose(1, 2).reshape(b, t, d))


class PaddleGPT2Attention(pnn.Layer):
    def __init__(self, d=32, n_head=4):
        super().__init__()
        self.n_head = n_head
        self.q_proj = pnn.Linear(d, d)
        self.k_proj = pnn.Linear(d, d)
        self.v_proj = pnn.Linear(d, d)
        self.out_proj = pnn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.n_head
        q, k, v = (p(x).reshape([b, t, h, d // h]).transpose([0, 2, 1, 3]) for p in (self.q_proj, self.k_proj, self.v_proj))
        att = paddle.matmul(q, k, transpose_y=True) / math.sqrt(d // h)
        att = paddle.where(paddle.tril(paddle.ones([t, t], dtype="bool")), att, paddle.full_like(att, float("-inf")))
        y = paddle.matmul(PF.softmax(att, axis=-1), v).transpose([0, 2, 1, 3]).reshape([b, t, d])
        return self.out_proj(y)


def _gpt2_block(fw, d=32, n_head=4):
    lib = nn if fw == "torch" else pnn
    Base = nn.Module if fw == "torch" else pnn.Layer

    class MLP(Base):
        def __init__(self):
            super().__init__()
            self.c_fc = lib.Linear(d, 4 * d)
            self.c_proj = lib.Linear(4 * d, d)
            self.act = nn.GELU(approximate="tanh") if fw == "torch" else pnn.GELU(approximate=True)

        def forward(self, x):
            return self.c_proj(self.act(self.c_fc(x)))

    class Block(Base):
        def __init__(self):
            super().__init__()
            self.ln_1 = lib.LayerNorm(d)
            self.attn = TorchGPT2Attention(d, n_head) if fw == "torch" else PaddleGPT2Attention(d, n_head)
            self.ln_2 = lib.LayerNorm(d)
            self.mlp = MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    return Block()


def gpt2_attention_maps(module, layer):
    """The rule a user writes (README, "Your own layers"): c_attn rows q|k|v -> three Linears."""
    d = module.c_proj.in_features
    maps = []
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        maps.append(Map("c_attn.weight", f"{name}.weight", "transpose", src_rows=(i * d, (i + 1) * d)))
        maps.append(Map("c_attn.bias", f"{name}.bias", src_rows=(i * d, (i + 1) * d)))
    return maps + [Map("c_proj.weight", "out_proj.weight", "transpose"), Map("c_proj.bias", "out_proj.bias")]


@pytest.fixture
def gpt2_rule(scoped_pool):
    scoped_pool.register_maps("torch", "TorchGPT2Attention", "paddle", "PaddleGPT2Attention")(gpt2_attention_maps)
    yield


def test_gpt2_fused_qkv_without_a_rule_names_every_unpaired_linear():
    base, raw = _gpt2_block("torch"), _gpt2_block("paddle")
    err = assert_refused(lambda: assign_weight(base, raw), TransferError, raw)
    msg = str(err)
    for path in ("attn.c_attn", "attn.c_proj", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"):
        assert f" {path} (Linear" in msg


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_gpt2_fused_qkv_with_a_user_rule_forward_and_gradients(gpt2_rule, src, dst):
    torch.manual_seed(0)
    paddle.seed(0)
    a, b = _gpt2_block(src), _gpt2_block(dst)
    x = np.random.default_rng(0).standard_normal((2, 5, 32)).astype("float32")
    result = auto_diff(a, b, x, diff_phase="both")
    assert result, str(result)
    assert result.max_abs_diff < 1e-5
    assert result.grads and all(g.ok for g in result.grads)
    report = assign_weight(a, b)
    assert not report.missing and not report.unexpected
    attn = [p for p in report.pairs if p.base_path == "attn"]
    assert len(attn) == 1 and attn[0].rule.startswith("mapping") and attn[0].tensors == 8


# ---------------------------------------------------------------------------------------------
# partial transfer: pretrained torch encoder into a paddle classifier, and back

@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_pretrained_encoder_into_a_model_with_a_new_head(src, dst):
    from padiff_lite.models_bert import bert_classifier, bert_pretraining

    torch.manual_seed(0)
    pretrained, model = bert_pretraining(src), bert_classifier(dst)
    report = assign_weight(pretrained, model, strict=False, init_unmatched="bert", std=0.02)
    assert report.missing[0] == "bert.embeddings.segment_embeddings.weight"
    assert all(m.startswith(("classifier.", "bert.embeddings.segment")) for m in report.missing)
    assert [line.split(":")[0] for line in report.initialised] == report.missing
    # the encoder now computes what the pretrained encoder computes
    ids = np.random.default_rng(0).integers(1, 30, size=(2, 7)).astype("int64")
    pretrained.eval()
    model.eval()
    if src == "torch":
        enc_a = pretrained.bert.encoder(pretrained.bert.embeddings.word_embeddings(torch.from_numpy(ids))).detach().numpy()
        enc_b = model.bert.encoder(model.bert.embeddings.word_embeddings(paddle.to_tensor(ids))).numpy()
    else:
        enc_a = pretrained.bert.encoder(pretrained.bert.embeddings.word_embeddings(paddle.to_tensor(ids))).numpy()
        enc_b = model.bert.encoder(model.bert.embeddings.word_embeddings(torch.from_numpy(ids))).detach().numpy()
    assert max_abs_diff([enc_a], [enc_b]) < 1e-5


# ---------------------------------------------------------------------------------------------
# the first hour: custom nn.Parameter / buffer, weight norm, paddle -> paddle restructured

class TorchScaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.gamma = nn.Parameter(torch.randn(8))
        self.register_buffer("pos", torch.randn(4, 8))

    def forward(self, x):
        return self.lin(x) * self.gamma + self.pos


class PaddleScaled(pnn.Layer):
    def __init__(self):
        super().__init__()
        self.lin = pnn.Linear(8, 8)
        self.gamma = self.create_parameter([8])
        self.register_buffer("pos", paddle.randn([4, 8]))

    def forward(self, x):
        return self.lin(x) * self.gamma + self.pos


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_custom_parameter_and_buffer_are_copied_by_name(src, dst):
    build = {"torch": TorchScaled, "paddle": PaddleScaled}
    x = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    result = auto_diff(build[src](), build[dst](), x)
    assert result, str(result)
    assert result.max_abs_diff < 1e-5


def _weight_norm_pair(fw):
    if fw == "torch":
        return nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(8, 6)), nn.Tanh())
    return pnn.Sequential(pnn.utils.weight_norm(pnn.Linear(8, 6), dim=1), pnn.Tanh())


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_weight_norm_is_refused_with_the_workaround_which_works(src, dst):
    a, b = _weight_norm_pair(src), _weight_norm_pair(dst)
    err = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    msg = str(err)
    assert "no map for base " in msg and "weight-norm tensors" in msg and "remove_weight_norm" in msg

    # the workaround the message gives: remove the weight norm, transfer, apply it again
    remove = {"torch": lambda m: nn.utils.parametrize.remove_parametrizations(m, "weight"),
              "paddle": pnn.utils.remove_weight_norm}
    remove[src](a[0])
    remove[dst](b[0])
    assign_weight(a, b)
    if dst == "torch":
        nn.utils.parametrizations.weight_norm(b[0])
    else:
        pnn.utils.weight_norm(b[0], dim=1)
    x = np.random.default_rng(0).standard_normal((3, 8)).astype("float32")
    out_a = a(torch.from_numpy(x)).detach().numpy() if src == "torch" else a(paddle.to_tensor(x)).numpy()
    out_b = b(torch.from_numpy(x)).detach().numpy() if dst == "torch" else b(paddle.to_tensor(x)).numpy()
    assert max_abs_diff([out_a], [out_b]) < 1e-5


class PaddleNested(pnn.Layer):
    def __init__(self):
        super().__init__()
        self.encoder = pnn.Sequential(pnn.Linear(8, 16), pnn.ReLU(), pnn.Linear(16, 16))
        self.head = pnn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.encoder(x))


class PaddleFlat(pnn.Layer):
    def __init__(self):
        super().__init__()
        self.fc_in = pnn.Linear(8, 16)
        self.act = pnn.ReLU()
        self.fc_hidden = pnn.Linear(16, 16)
        self.classifier = pnn.Linear(16, 4)

    def forward(self, x):
        return self.classifier(self.fc_hidden(self.act(self.fc_in(x))))


@pytest.mark.parametrize("nested_is_base", [True, False], ids=["nested->flat", "flat->nested"])
def test_paddle_to_paddle_restructured_model_with_set_layer_map(nested_is_base):
    nested, flat = PaddleNested(), PaddleFlat()
    pn, pf = create_model(nested), create_model(flat)
    pn.set_layer_map([nested.encoder[0], nested.encoder[2], nested.head])
    pf.set_layer_map([flat.fc_in, flat.fc_hidden, flat.classifier])
    base, raw = (pn, pf) if nested_is_base else (pf, pn)
    x = np.random.default_rng(0).standard_normal((3, 8)).astype("float32")
    result = auto_diff(base, raw, x)
    assert result, str(result)
    assert result.max_abs_diff < 1e-6


def paddle_mlp_tanh_for_relu():
    from padiff_lite.models import mlp

    m = mlp("paddle")
    m[1] = pnn.Tanh()
    return m


def test_cli_check_is_reproducible_models_seeded_too(capsys):
    """README shows `check` output: with --seed the models' own initialisation is seeded too, so it is repeatable."""
    from padiff_lite.cli import main

    argv = ["check", "--base", "padiff_lite.models:mlp", "--raw", "test_realworld:paddle_mlp_tanh_for_relu",
            "--input-shape", "4,16"]  # the README's example: the differences depend on the weights
    outs = []
    for _ in range(2):
        assert main(argv) == 1
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    assert "max abs diff" in outs[0]

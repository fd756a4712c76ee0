"""padiff_lite.init_weights: the same schemes, statistics and rules on torch and paddle models."""
import numpy as np
import paddle
import pytest
import torch

from helpers import NN, np_of, snapshot, tensors
from fixtures.bert import token_ids
from padiff_lite import InitError, init_weights
from padiff_lite.models import run
from padiff_lite.models_bert import HEAD_DIM, HIDDEN, PAD, bert_classifier, bert_pretraining

FWS = ["torch", "paddle"]


def bert_init(fw, scheme="bert", seed=7, **kw):
    model = bert_classifier(fw)
    torch.manual_seed(seed)  # the named schemes draw from torch's generator, for both frameworks
    report = init_weights(model, scheme, **kw)
    return model, report


def test_bert_scheme_gives_the_same_numbers_in_torch_and_paddle():
    (mt, rt), (mp, rp) = bert_init("torch"), bert_init("paddle")
    assert rt.initialised == rp.initialised and len(rt.initialised) == 43 and not rt.left
    tt, tp = tensors(mt), tensors(mp)
    assert tt.keys() == tp.keys()
    for k in tt:
        np.testing.assert_array_equal(tp[k], tt[k], err_msg=k)  # paddle Linear weights compared transposed
    ids, seg = token_ids(), np.ones((2, 12), dtype="int64")
    np.testing.assert_allclose(run(mp, "paddle", [ids, seg])[0], run(mt, "torch", [ids, seg])[0], atol=1e-5)


@pytest.mark.parametrize("fw", FWS)
def test_bert_scheme_statistics_and_rules(fw):
    model, report = bert_init(fw, std=0.05)
    t = tensors(model)
    weights = [k for k in t if k.endswith("weight") and "LayerNorm" not in k and "norm" not in k]
    assert len(weights) == 2 * 6 + 3 + 2  # 6 Linear per block, 3 embeddings, 2 head Linear
    for k in weights:
        w = t[k]
        if "embeddings" in k:
            pad = PAD if "word" in k else 0 if "segment" in k else None
            if pad is not None:
                assert not w[pad].any(), f"{k}: padding row {pad} is not 0"
                w = np.delete(w, pad, axis=0)
        if w.size >= 4096:
            assert abs(w.std() / 0.05 - 1) < 0.1, (k, w.std())
    for k, v in t.items():
        if k.endswith("bias"):
            assert not v.any(), k
        elif "orm" in k:  # LayerNorm / attn_norm / ffn_norm weights
            assert (v == 1).all(), k
    big = t["classifier.dense.weight"]
    assert big.shape == (HEAD_DIM, HIDDEN) and abs(big.std() / 0.05 - 1) < 0.03


@pytest.mark.parametrize("fw", FWS)
def test_xavier_uses_torch_layout_fans_in_both_frameworks(fw):
    nn = NN[fw]
    conv = nn.Conv1d(4, 8, 3) if fw == "torch" else nn.Conv1D(4, 8, 3)
    model = nn.Sequential(nn.Linear(64, 256), conv)
    torch.manual_seed(3)
    report = init_weights(model, "xavier")
    assert report.initialised[0] == "0.weight: xavier xavier_uniform(fan_in=64, fan_out=256)"
    assert report.initialised[2] == "1.weight: xavier xavier_uniform(fan_in=12, fan_out=24)"
    t = tensors(model)
    lin, cw = t["0.weight"], t["1.weight"]
    bound = np.sqrt(6 / (64 + 256))
    assert lin.shape == (256, 64) and np.abs(lin).max() <= bound and abs(lin.std() / (bound / np.sqrt(3)) - 1) < 0.05
    assert np.abs(cw).max() <= np.sqrt(6 / (12 + 24))
    assert not t["0.bias"].any() and not t["1.bias"].any()


def test_xavier_values_are_identical_across_frameworks():
    t = {}
    for fw in FWS:
        model = NN[fw].Linear(16, 48)
        torch.manual_seed(11)
        init_weights(model, "xavier")
        t[fw] = tensors(model)["weight"]
    np.testing.assert_array_equal(t["paddle"], t["torch"])


def lstm(fw):
    if fw == "torch":
        return torch.nn.LSTM(8, 16, batch_first=True)
    return paddle.nn.LSTM(8, 16)


@pytest.mark.parametrize("fw", FWS)
def test_orthogonal_makes_each_recurrent_gate_block_orthogonal(fw):
    model = lstm(fw)
    report = init_weights(model, "orthogonal")
    assert [line.split(":")[0] for line in report.initialised] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                                                  "bias_hh_l0"]  # paddle's cell aliases not again
    hh = np_of(model.weight_hh_l0).astype("float64")
    assert hh.shape == (64, 16)
    for g in range(4):
        block = hh[16 * g:16 * (g + 1)]
        np.testing.assert_allclose(block @ block.T, np.eye(16), atol=1e-5)
    ih = np_of(model.weight_ih_l0)
    assert np.abs(ih).max() <= np.sqrt(6 / (8 + 64)) and np.abs(ih).std() > 0
    assert not np_of(model.bias_ih_l0).any() and not np_of(model.bias_hh_l0).any()


@pytest.mark.parametrize("fw", FWS)
def test_a_sub_part_only(fw):
    model = bert_classifier(fw)
    before = snapshot(model)
    report = init_weights(model.classifier, "bert")
    assert [line.split(":")[0] for line in report.initialised] == [
        "dense.weight", "dense.bias", "LayerNorm.weight", "LayerNorm.bias", "out.weight", "out.bias"]
    after = snapshot(model)
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    # only the head moved (paddle biases and the LayerNorm were already 0 and 1/0 as built)
    assert all(k.startswith("classifier.") for k in changed) and {"classifier.dense.weight", "classifier.out.weight"} <= set(changed)


@pytest.mark.parametrize("fw", FWS)
def test_tied_weights_are_initialised_once_and_stay_tied(fw):
    model = bert_pretraining(fw)
    report = init_weights(model, "bert")
    paths = [line.split(":")[0] for line in report.initialised]
    assert "bert.embeddings.word_embeddings.weight" in paths
    assert "cls.decoder.weight" not in paths and "cls.decoder_weight" not in paths
    emb = model.bert.embeddings.word_embeddings.weight
    assert (model.cls.decoder.weight if fw == "torch" else model.cls.decoder_weight) is emb
    assert not np_of(emb)[PAD].any()


@pytest.mark.parametrize("fw", FWS)
def test_unknown_classes_are_left_and_named(fw):
    Base = torch.nn.Module if fw == "torch" else paddle.nn.Layer

    class WithScale(Base):
        def __init__(self):
            super().__init__()
            self.fc = NN[fw].Linear(4, 4)
            if fw == "torch":
                self.scale = torch.nn.Parameter(torch.full((4,), 3.0))
            else:
                self.scale = self.create_parameter([4], default_initializer=paddle.nn.initializer.Constant(3.0))

    model = WithScale()
    report = init_weights(model, "bert")
    assert report.left == ["scale: class WithScale has no rule in scheme 'bert'; initialise it yourself or pass a "
                           "callable"]
    assert (np_of(model.scale) == 3.0).all() and len(report.initialised) == 2


@pytest.mark.parametrize("fw", FWS)
def test_callable_is_applied_like_module_apply(fw):
    model = bert_classifier(fw)
    seen = []

    def zero_linears(module):
        seen.append(type(module).__name__)
        if isinstance(module, NN[fw].Linear):
            for p in module.parameters():
                if fw == "torch":
                    torch.nn.init.zeros_(p)
                else:
                    p.set_value(paddle.zeros(p.shape, p.dtype))

    report = init_weights(model, zero_linears)
    # children before parents; containers without own tensors (encoder, classifier, the root) are not called
    assert seen[:4] == ["Embedding", "Embedding", "Embedding", "LayerNorm"]
    assert seen[-3:] == ["Linear", "LayerNorm", "Linear"] and seen.count("Linear") == 14 and len(seen) == 23
    assert all(line.endswith("zero_linears") for line in report.initialised)
    done = {line.split(": ")[0] for line in report.initialised}
    lin_weights = {k for k in tensors(model) if k.endswith("weight") and "mbedding" not in k and "orm" not in k}
    assert len(lin_weights) == 14 and lin_weights <= done
    assert len(done) == (28 if fw == "torch" else 14)  # paddle Linear biases are 0 as built: unchanged
    assert len(report.left) == 43 - len(done) and all(x.endswith("the callable did not change it") for x in report.left)
    assert all(not v.any() for k, v in tensors(model).items() if "dense" in k or "query" in k)


@pytest.mark.parametrize("fw", FWS)
def test_default_scheme_is_the_frameworks_own(fw):
    model = NN[fw].Linear(64, 256)
    with paddle.no_grad(), torch.no_grad():
        if fw == "torch":
            model.weight.fill_(5.0)
        else:
            model.weight.set_value(paddle.full(model.weight.shape, 5.0))
    report = init_weights(model, "default")
    w = tensors(model)["weight"]
    bound = 1 / np.sqrt(64) if fw == "torch" else np.sqrt(6 / (64 + 256))  # kaiming(a=sqrt(5)) vs Xavier
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert report.initialised[0].startswith(f"weight: {fw} default of Linear")


def test_bad_scheme_and_std_are_named_errors():
    with pytest.raises(InitError, match="unknown initialisation scheme 'he'"):
        init_weights(torch.nn.Linear(2, 2), "he")
    with pytest.raises(InitError, match="std must be a positive finite number"):
        init_weights(paddle.nn.Linear(2, 2), "bert", std=-1)

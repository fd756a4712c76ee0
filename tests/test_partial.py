"""Issue 6: partial transfers (pretrained encoder -> encoder plus new head) and initialising what is left."""
import numpy as np
import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, NN, Base, assert_refused, assert_unchanged, np_of, snapshot, tensors
from fixtures.bert import token_ids
from padiff_lite import InitError, TransferError, assign_weight
from padiff_lite.models import run
from padiff_lite.models_bert import (HEAD_DIM, HIDDEN, SEGMENTS, bert_classifier, bert_pretraining, register_rules)

NEW = ["bert.embeddings.segment_embeddings.weight", "classifier.dense.weight", "classifier.dense.bias",
       "classifier.LayerNorm.weight", "classifier.LayerNorm.bias", "classifier.out.weight", "classifier.out.bias"]
UNUSED = {  # the base's tensors nobody reads, in state_dict order; the tied MLM decoder weight counts once
    "torch": ["bert.pooler.dense.weight", "bert.pooler.dense.bias", "cls.transform.weight", "cls.transform.bias",
              "cls.LayerNorm.weight", "cls.LayerNorm.bias", "cls.decoder.bias"],
    "paddle": ["bert.pooler.dense.weight", "bert.pooler.dense.bias", "cls.decoder_bias", "cls.transform.weight",
               "cls.transform.bias", "cls.LayerNorm.weight", "cls.LayerNorm.bias"],
}


def spoil_new_layers(model):
    """Fill every new tensor with 5.0 so that an initialisation that did nothing is seen."""
    for path in NEW:
        t = model
        for part in path.split("."):
            t = getattr(t, part)
        if isinstance(t, torch.Tensor):
            with torch.no_grad():
                t.fill_(5.0)
        else:
            t.set_value(paddle.full(t.shape, 5.0, t.dtype))


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_strict_refuses_with_every_unpaired_tensor_and_writes_nothing(src, dst):
    a, b = bert_pretraining(src), bert_classifier(dst)
    e = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    msg = str(e)
    for path in NEW + UNUSED[src]:
        assert path in msg, path
    assert "strict=False" in msg and "nothing was written" in msg


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_strict_with_init_unmatched_is_a_clear_value_error(src, dst):
    a, b = bert_pretraining(src), bert_classifier(dst)
    snap = snapshot(b)
    with pytest.raises(ValueError, match="only applies with strict=False") as e:
        assign_weight(a, b, init_unmatched="bert")
    assert isinstance(e.value, InitError)
    with pytest.raises(InitError, match="unknown initialisation scheme 'kaiming'"):
        assign_weight(a, b, strict=False, init_unmatched="kaiming")
    with pytest.raises(InitError, match="std must be a positive"):
        assign_weight(a, b, strict=False, init_unmatched="bert", std=0)
    assert_unchanged(b, snap)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_encoder_into_encoder_plus_classifier_with_bert_init(src, dst):
    a, b = bert_pretraining(src), bert_classifier(dst)
    spoil_new_layers(b)
    ids = token_ids()
    before = np.abs(run(a.bert, src, [ids])[0] - run(b.bert, dst, [ids])[0]).max()
    assert before > 1e-2

    report = assign_weight(a, b, strict=False, init_unmatched="bert")

    assert report.missing == NEW
    assert report.unexpected == UNUSED[src]
    assert [line.split(": ")[0] for line in report.initialised] == NEW
    assert not [n for n in report.notes if n.startswith("left as built")]
    # transferred: every encoder tensor equals the source, and the encoders agree on real input
    ta, tb = tensors(a), tensors(b)
    shared = [k for k in tb if k not in NEW]
    assert len(shared) == 36 and all(k in ta for k in shared)
    for k in shared:
        np.testing.assert_array_equal(tb[k], ta[k], err_msg=k)
    after = np.abs(run(a.bert, src, [ids])[0] - run(b.bert, dst, [ids])[0]).max()
    assert after < 1e-5, f"encoder outputs differ by {after}"
    # new: N(0, 0.02) weights, zero biases, LayerNorm 1/0, padding row 0
    seg = tb["bert.embeddings.segment_embeddings.weight"]
    assert seg.shape == (SEGMENTS, HIDDEN) and not seg[0].any()
    for w in (seg[1:], tb["classifier.dense.weight"], tb["classifier.out.weight"]):
        assert abs(w.std() / 0.02 - 1) < 0.1 and abs(w.mean()) < 0.005
    assert tb["classifier.dense.weight"].shape == (HEAD_DIM, HIDDEN)
    assert not tb["classifier.dense.bias"].any() and not tb["classifier.out.bias"].any()
    assert (tb["classifier.LayerNorm.weight"] == 1).all() and not tb["classifier.LayerNorm.bias"].any()
    # the new model runs end to end on the transferred encoder
    logits = run(b, dst, [ids])[0]
    assert logits.shape == (2, 4) and np.isfinite(logits).all()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_without_init_unmatched_the_new_layers_stay_as_built(src, dst):
    a, b = bert_pretraining(src), bert_classifier(dst)
    spoil_new_layers(b)
    report = assign_weight(a, b, strict=False)
    assert report.initialised == [] and report.missing == NEW
    assert all((v == 5.0).all() for k, v in tensors(b).items() if k in NEW)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_default_init_uses_the_frameworks_own_initialisation_for_missing_tensors_only(src, dst):
    a, b = bert_pretraining(src), bert_classifier(dst)
    spoil_new_layers(b)
    report = assign_weight(a, b, strict=False, init_unmatched="default")
    assert [line.split(": ")[0] for line in report.initialised] == NEW
    tb, ta = tensors(b), tensors(a)
    np.testing.assert_array_equal(tb["bert.encoder.layers.1.query.weight"], ta["bert.encoder.layers.1.query.weight"])
    w, bias = tb["classifier.dense.weight"], tb["classifier.dense.bias"]  # torch layout [256, 64]
    if dst == "torch":  # kaiming_uniform(a=sqrt(5)) -> U(+-1/sqrt(fan_in)); bias U(+-1/sqrt(fan_in))
        bound = 1 / np.sqrt(HIDDEN)
        assert np.abs(bias).max() <= bound and np.abs(bias).std() > 0
        seg_std = 1.0  # torch Embedding: N(0, 1)
    else:  # paddle: Xavier-uniform, bias 0
        bound = np.sqrt(6 / (HIDDEN + HEAD_DIM))
        assert not bias.any()
        seg_std = np.sqrt(2 / (SEGMENTS + HIDDEN))  # Xavier-uniform std = bound / sqrt(3)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    seg = tb["bert.embeddings.segment_embeddings.weight"]
    assert not seg[0].any() and abs(seg[1:].std() / seg_std - 1) < 0.1
    assert (tb["classifier.LayerNorm.weight"] == 1).all() and not tb["classifier.LayerNorm.bias"].any()


def partly_new(fw):
    """A Linear whose weight has a source but whose bias does not (the source Linear has bias=False)."""
    nn = NN[fw]

    class PartlyNew(Base(fw)):
        def __init__(self, with_bias, head_first=False):
            super().__init__()
            if head_first:
                self.head = nn.Linear(8, 3)
            kw = {} if with_bias else ({"bias": False} if fw == "torch" else {"bias_attr": False})
            self.body = nn.Sequential(nn.Linear(5, 8, **kw), nn.Tanh())
            if not head_first:
                self.head = nn.Linear(8, 3)

    return PartlyNew


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_missing_lists_follow_model_order_and_a_callable_touches_only_missing_tensors(src, dst):
    a = partly_new(src)(with_bias=False)
    b = partly_new(dst)(with_bias=True, head_first=True)  # head registered first in the raw model
    del a.head  # base: no head at all
    called = []

    def fill(module):
        called.append(type(module).__name__)
        for t in module.parameters():
            if isinstance(t, torch.Tensor):
                torch.nn.init.constant_(t, 0.5)
            else:
                t.set_value(paddle.full(t.shape, 0.5, t.dtype))

    report = assign_weight(a, b, strict=False, init_unmatched=fill)
    assert report.missing == ["head.weight", "head.bias", "body.0.bias"]
    assert called == ["Linear", "Linear"]  # head, then body.0; not Sequential, not the root
    tb, ta = tensors(b), tensors(a)
    np.testing.assert_array_equal(tb["body.0.weight"], ta["body.0.weight"])  # put back: it was transferred
    assert (tb["body.0.bias"] == 0.5).all() and (tb["head.weight"] == 0.5).all() and (tb["head.bias"] == 0.5).all()
    assert sorted(line.split(": ")[0] for line in report.initialised) == sorted(report.missing)


@pytest.mark.parametrize("dst", ["torch", "paddle"])
def test_a_callable_that_raises_or_replaces_a_tensor_leaves_raw_unchanged(dst):
    a, b = bert_pretraining("torch"), bert_classifier(dst)
    snap = snapshot(b)

    def boom(module):
        raise RuntimeError("no")

    with pytest.raises(InitError, match="raised RuntimeError: no; the model was restored"):
        assign_weight(a, b, strict=False, init_unmatched=boom)
    assert_unchanged(b, snap)

    old = b.classifier.out.weight

    def replace(module):
        if module is b.classifier.out:
            if dst == "torch":
                module.weight = torch.nn.Parameter(torch.zeros_like(module.weight))
            else:
                module.weight = module.create_parameter(module.weight.shape)

    with pytest.raises(InitError, match="replaced tensors instead of writing into them") as e:
        assign_weight(a, b, strict=False, init_unmatched=replace)
    assert "classifier.out.weight" in str(e.value)
    assert b.classifier.out.weight is old
    assert_unchanged(b, snap)


# -- tied weights across frameworks ---------------------------------------------------------------------
@pytest.fixture
def bert_rules(scoped_pool):
    """The MLM head rule, registered for the test only (importing models_bert registers nothing)."""
    return register_rules(scoped_pool)


def test_importing_models_bert_registers_nothing_and_register_rules_is_idempotent(scoped_pool):
    key = ("torch", "BertLMHead", "paddle", "BertLMHead")
    assert key not in scoped_pool
    register_rules(scoped_pool)
    register_rules(scoped_pool)
    assert key in scoped_pool and ("paddle", "BertLMHead", "torch", "BertLMHead") in scoped_pool


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_tied_decoder_stays_tied_and_counts_once(src, dst, bert_rules):
    a, b = bert_pretraining(src), bert_pretraining(dst)
    report = assign_weight(a, b)
    emb = b.bert.embeddings.word_embeddings.weight
    dec = b.cls.decoder.weight if dst == "torch" else b.cls.decoder_weight
    assert dec is emb
    assert report.tensors == 43 and not report.missing and not report.unexpected  # 44 names, 43 tensors
    ids = token_ids()
    out_a, out_b = run(a, src, [ids]), run(b, dst, [ids])
    np.testing.assert_allclose(out_b[0], out_a[0], atol=5e-5)  # MLM logits through the tied decoder
    np.testing.assert_allclose(out_b[1], out_a[1], atol=1e-5)  # pooled


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_tied_base_into_untied_raw_gives_both_the_same_values(src, dst, bert_rules):
    a, b = bert_pretraining(src, tie=True), bert_pretraining(dst, tie=False)
    report = assign_weight(a, b)
    emb = np_of(b.bert.embeddings.word_embeddings.weight)
    dec = np_of(b.cls.decoder.weight if dst == "torch" else b.cls.decoder_weight)
    src_emb = np_of(a.bert.embeddings.word_embeddings.weight)
    np.testing.assert_array_equal(emb, src_emb)
    np.testing.assert_array_equal(dec, src_emb)
    assert report.tensors == 44
    ids = token_ids()
    np.testing.assert_allclose(run(b, dst, [ids])[0], run(a, src, [ids])[0], atol=5e-5)


def test_a_registry_of_ones_own_is_honoured_by_assign_weight_and_auto_diff():
    from padiff_lite import auto_diff
    from padiff_lite.special_init import InitPool, init_pool

    pool = InitPool()
    pool.restore(init_pool.saved())  # the built-in rules, plus the MLM head's in this pool only
    register_rules(pool)
    assert ("torch", "BertLMHead", "paddle", "BertLMHead") not in init_pool
    a, b = bert_pretraining("torch"), bert_pretraining("paddle")
    with pytest.raises(TransferError, match="cls"):
        assign_weight(a, b)  # the global registry has no rule for the heads
    assert assign_weight(a, b, pool=pool).tensors == 43
    result = auto_diff(a, b, token_ids(), pool=pool, atol=5e-5, rtol=1e-4)  # transfers with the pool first
    assert result.ok, str(result)

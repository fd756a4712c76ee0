"""HuggingFace's BertModel against a PaddleNLP-style BERT on paddle.nn.TransformerEncoder (tests/bert_ports.py):
names, nesting and definition order differ, the order in which layers run does not. Zero configuration given an
example input, a new classifier head on one side, auto_diff layer by layer, and a mapping found once on small
random models converting checkpoint files both ways, bit-exact. Every check compares outputs, both directions.
"""
from __future__ import annotations

import re

import transformers  # noqa: F401  (before paddleformers, should anything import it)
import numpy as np
import paddle
import pytest
import torch

import bert_ports as bp
from helpers import DIRECTION_IDS, DIRECTIONS, assert_refused, max_abs_diff
from padiff_lite import TransferError, assign_weight, auto_diff, convert_checkpoint, pair_layers
from padiff_lite.cli import main

BUILD = {"torch": bp.hf_bert, "paddle": bp.paddle_bert}
IDS = bp.token_ids()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_hf_bert_and_a_paddle_port_pair_by_execution_with_zero_configuration(src, dst):
    a, b = BUILD[src](), BUILD[dst]()
    assert max_abs_diff(bp.outputs(a, IDS), bp.outputs(b, IDS)) > 1e-3
    # names alone cannot do it, and the error says what can
    err = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    assert "pass example_inputs=" in str(err)
    report = assign_weight(a, b, example_inputs=IDS)
    assert max_abs_diff(bp.outputs(a, IDS), bp.outputs(b, IDS)) < 1e-5
    assert not report.missing and not report.unexpected and report.tensors == 39
    pairs = {e.base: (e.raw, e.how) for e in report.mapping.layers}
    hf_to_paddle = {"encoder.layer.1.attention.self.query": "encoder.layers.1.self_attn.q_proj",
                    "encoder.layer.1.attention.self.value": "encoder.layers.1.self_attn.v_proj",
                    "encoder.layer.0.attention.output.dense": "encoder.layers.0.self_attn.out_proj",
                    "encoder.layer.0.attention.output.LayerNorm": "encoder.layers.0.norm1",
                    "encoder.layer.0.intermediate.dense": "encoder.layers.0.linear1",
                    "encoder.layer.0.output.LayerNorm": "encoder.layers.0.norm2"}
    for hf, pd in hf_to_paddle.items():
        assert pairs[hf if src == "torch" else pd] == (pd if src == "torch" else hf, "execution")
    # names go first: what pairs by name is never re-paired by execution
    assert pairs["embeddings.word_embeddings"] == ("embeddings.word_embeddings", "name")
    assert pairs["pooler.dense"] == ("pooler.dense", "name")


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_new_classifier_head_on_one_side(src, dst):
    """torch -> paddle: BertModel into a paddle classifier; paddle -> torch: the paddle BertModel into HF's
    BertForSequenceClassification. The head is new: strict=False lists it, init_unmatched='bert' fills it."""
    a = BUILD[src]()
    b = bp.paddle_bert_classifier() if dst == "paddle" else bp.torch_bert_classifier()
    report = assign_weight(a, b, example_inputs=IDS, strict=False, init_unmatched="bert")
    assert report.missing == ["classifier.weight", "classifier.bias"] and not report.unexpected
    assert [line.split(":")[0] for line in report.initialised] == report.missing
    assert max_abs_diff(bp.outputs(a, IDS), bp.outputs(b.bert, IDS)) < 1e-5


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_auto_diff_compares_the_bert_port_layer_by_layer(src, dst):
    a, b = BUILD[src](), BUILD[dst]()
    result = auto_diff(a, b, IDS, atol=1e-5, rtol=1e-4)
    assert result, str(result)
    compared = {(ld.base_path, ld.raw_path) for ld in result.layers}
    pair = ("encoder.layer.1.output.dense", "encoder.layers.1.linear2")
    assert (pair if src == "torch" else pair[::-1]) in compared
    assert len(compared) >= 21


def test_a_mapping_found_on_random_models_converts_checkpoints_both_ways_bit_exact(tmp_path, capsys):
    # found once, on small random-weight models, through the command line
    mapping = tmp_path / "bert.map.json"
    assert main(["pair", "--base", "bert_ports:hf_bert", "--raw", "bert_ports:paddle_bert", "--input-shape", "2,9",
                 "--dtype", "int64", "-o", str(mapping)]) == 0
    assert re.search(r"encoder\.layer\.0\.attention\.self\.query +-> encoder\.layers\.0\.self_attn\.q_proj  \[execution\]",
                     capsys.readouterr().out)
    # a "trained" torch checkpoint of the same architecture; nothing runs from here on
    torch.manual_seed(7)
    trained = bp.hf_bert()
    torch.save(trained.state_dict(), tmp_path / "bert.pt")
    assert main(["--quiet", "convert", str(tmp_path / "bert.pt"), str(tmp_path / "bert.pdparams"), "--base", "bert_ports:hf_bert",
                 "--raw", "bert_ports:paddle_bert", "--map", str(mapping)]) == 0
    # back, with the same file (turned around because the frameworks are swapped), from Python this time
    report = convert_checkpoint(tmp_path / "bert.pdparams", tmp_path / "back.pt", bp.paddle_bert, bp.hf_bert,
                                mapping=mapping)
    assert report.tensors == 39
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    original = trained.state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)
    # and the paddle checkpoint computes what the trained torch model computes
    from padiff_lite.formats.files import open_checkpoint

    port = bp.paddle_bert()
    ck = open_checkpoint(tmp_path / "bert.pdparams")
    port.set_state_dict({k: paddle.to_tensor(ck.get(k).numpy()) for k in ck.infos})
    assert max_abs_diff(bp.outputs(trained, IDS), bp.outputs(port, IDS)) < 1e-5


def test_pairing_by_execution_is_fast_enough():
    import time

    a, b = bp.hf_bert(), bp.paddle_bert()
    t0 = time.perf_counter()
    found = pair_layers(a, b, example_inputs=IDS)
    assert time.perf_counter() - t0 < 5.0
    assert len(found.layers) == 21 and len(found.tensors) == 39
    np.testing.assert_array_equal(IDS, bp.token_ids())  # the example input is not changed

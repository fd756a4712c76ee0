"""tree.py alone, over the fake adapter: own tensors, ties, non-persistent buffers, black/white lists, counts."""
from fake import TORCHLIKE, module, tensor

from padiff_lite.proxy import create_model
from padiff_lite.tree import ModelTree


def net():
    emb = tensor(10, 4)
    return module(
        "Net",
        embed=module("Embedding", weight=emb),
        body=module("Block", fc=module("Linear", weight=tensor(4, 4), bias=tensor(4)),
                    norm=module("BatchNorm", weight=tensor(4), buffers={"mean": tensor(4), "cache": tensor(4)},
                                transient={"cache"})),
        act=module("ReLU"),
        head=module("Head", weight=emb, bias=tensor(10)),
    )


def build(model, keep_empty=False, lists=None):
    proxy = create_model(model, adapter=TORCHLIKE)
    for kind, layers, mode in lists or ():
        getattr(proxy, f"update_{kind}_list")(layers, mode)
    return ModelTree(proxy, keep_empty=keep_empty).build(model)


def test_tensors_by_dotted_path_in_state_dict_order_without_non_persistent_buffers():
    root = build(net())
    refs = root.subtree_tensors()
    assert list(refs) == ["embed.weight", "body.fc.weight", "body.fc.bias", "body.norm.weight", "body.norm.mean",
                          "head.weight", "head.bias"]
    assert refs["body.norm.mean"].kind == "buffer" and refs["body.fc.weight"].kind == "param"
    act = dict(root.children)["act"]  # no tensors at all: kept, a rule may pair it with a layer that has some
    assert act.bare and act.count == 0 and not act.own


def test_a_tensor_met_twice_is_an_alias_of_its_first_place():
    root = build(net())
    refs = root.subtree_tensors()
    assert refs["head.weight"].alias_of == "embed.weight" and refs["embed.weight"].alias_of is None
    assert refs["head.weight"].tensor is refs["embed.weight"].tensor
    assert (root.count, root.fresh) == (7, 6)  # the alias counts, but carries nothing new
    head = dict(root.children)["head"]
    assert (head.count, head.fresh) == (2, 1)


def test_keep_empty_keeps_modules_whose_tensors_the_lists_leave_out():
    model = net()
    lists = [("black", [model.body], "sublayers")]
    assert [name for name, _ in build(model, lists=lists).children] == ["embed", "act", "head"]
    kept = dict(build(model, keep_empty=True, lists=lists).children)["body"]
    assert kept.on and kept.count == 0 and not kept.bare and not kept.children


def test_black_list_modes():
    model = net()
    body = model.body
    self_only = build(model, lists=[("black", [body], "self")]).subtree_tensors()
    assert "body.fc.weight" in self_only  # "self": body's own tensors (none), children kept
    sublayers = build(model, lists=[("black", [body], "sublayers")]).subtree_tensors()
    assert not [p for p in sublayers if p.startswith("body.")]
    off = build(model, lists=[("black", [model.embed], "all")])
    refs = off.subtree_tensors()
    assert "embed.weight" not in refs
    assert refs["head.weight"].alias_of is None  # its first place left out: the tie is the head's own now


def test_white_list_takes_only_what_it_names():
    model = net()
    refs = build(model, lists=[("white", [model.body], "all")]).subtree_tensors()
    assert list(refs) == ["body.fc.weight", "body.fc.bias", "body.norm.weight", "body.norm.mean"]
    refs = build(model, lists=[("white", [model.head], "self")]).subtree_tensors()
    assert list(refs) == ["head.weight", "head.bias"]


def test_excluded_modules_are_left_out_of_the_tree():
    model = net()
    proxy = create_model(model, adapter=TORCHLIKE)
    root = ModelTree(proxy, exclude_ids=[id(model.body)]).build(model)
    assert [name for name, _ in root.children] == ["embed", "act", "head"]

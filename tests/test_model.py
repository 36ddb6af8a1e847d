"""UNet++ node graph, shapes, lazy depth-limited forward, exact pruning, parameter counts."""

from __future__ import annotations

import pytest
import torch

from napari_unetpp.model import (
    NestedNode,
    UNetPlusPlus,
    head_name,
    node_name,
    nodes_for_depth,
    unwrap_model,
)

TINY = (4, 8, 16, 32, 64)


def _tiny(spatial_dims: int = 2, **kwargs) -> UNetPlusPlus:
    torch.manual_seed(0)
    return UNetPlusPlus(widths=TINY, spatial_dims=spatial_dims, **kwargs).eval()


def test_node_graph_is_the_papers():
    net = _tiny()
    expected = {node_name(i, j) for i in range(5) for j in range(5 - i)}
    assert set(net.nodes.keys()) == expected  # 15 nodes for depth 4
    assert set(net.heads.keys()) == {head_name(d) for d in (1, 2, 3, 4)}
    # X[i, j] concatenates j same-level maps and one up-sampled map of width w_i
    for i, j in nodes_for_depth(4):
        node = net.nodes[node_name(i, j)]
        if j:
            assert isinstance(node, NestedNode)
            assert node.block[0].in_channels == TINY[i] * (j + 1)
            assert node.up.in_channels == TINY[i + 1]


def test_nodes_for_depth_orders_inputs_before_their_users():
    order = nodes_for_depth(4)
    seen: set[tuple[int, int]] = set()
    for i, j in order:
        needs = [(i - 1, 0)] if j == 0 and i else []
        if j:
            needs = [(i, k) for k in range(j)] + [(i + 1, j - 1)]
        assert all(n in seen for n in needs), (i, j)
        seen.add((i, j))
    assert seen == {(i, j) for i in range(5) for j in range(5) if i + j <= 4}


@pytest.mark.parametrize("spatial_dims, shape", [(2, (2, 1, 48, 64)), (3, (1, 1, 16, 32, 16))])
def test_output_shapes_per_head(spatial_dims, shape):
    net = _tiny(spatial_dims, num_classes=3, depth=3 if spatial_dims == 3 else 4)
    out = net(torch.randn(shape))
    assert list(out) == list(net.head_depths)
    for logits in out.values():
        assert logits.shape == (shape[0], 3, *shape[2:])


@pytest.mark.parametrize(
    "spatial_dims, shape", [(2, (1, 1, 33, 47)), (2, (1, 1, 5, 70)), (3, (1, 1, 13, 17, 19))]
)
def test_odd_sizes_are_padded_and_cropped(spatial_dims, shape):
    net = _tiny(spatial_dims, depth=3)
    x = torch.randn(shape)
    out = net(x)
    assert all(o.shape[2:] == x.shape[2:] for o in out.values())
    # Padding is reflect/replicate, then cropped: the centred crop of a padded
    # input gives the same result as running the padded input directly.
    multiple = 8
    extra = [(-s) % multiple for s in shape[2:]]
    pad: list[int] = []
    for e in reversed(extra):
        pad += [e // 2, e - e // 2]
    mode = "reflect" if all(e < s for e, s in zip(extra, shape[2:], strict=False)) else "replicate"
    padded = torch.nn.functional.pad(x, pad, mode=mode)
    direct = net(padded)[3]
    index = (slice(None), slice(None)) + tuple(
        slice(e // 2, e // 2 + s) for e, s in zip(extra, shape[2:], strict=False)
    )
    torch.testing.assert_close(out[3], direct[index])


def test_depth_limited_forward_runs_only_needed_nodes():
    net = _tiny()
    ran: list[str] = []
    for name, module in net.nodes.items():
        module.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    for depth in (1, 2, 3, 4):
        ran.clear()
        out = net(torch.randn(1, 1, 32, 32), depths=[depth])
        assert list(out) == [depth]
        assert sorted(ran) == sorted(node_name(i, j) for i, j in nodes_for_depth(depth))
        assert len(ran) == (depth + 1) * (depth + 2) // 2
    # asking for several heads computes shared nodes once
    ran.clear()
    net(torch.randn(1, 1, 32, 32), depths=[1, 2])
    assert len(ran) == len(set(ran)) == 6


def test_requested_heads_match_full_forward():
    net = _tiny()
    x = torch.randn(1, 1, 64, 64)
    full = net(x)
    for d in (1, 2, 3, 4):
        torch.testing.assert_close(net(x, depths=[d])[d], full[d], rtol=0, atol=0)


def test_unknown_depth_and_bad_input_are_clear_errors():
    net = _tiny(depth=2)
    with pytest.raises(ValueError, match="heads at depths"):
        net(torch.randn(1, 1, 16, 16), depths=[3])
    with pytest.raises(ValueError, match="expected input of shape"):
        net(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError, match="needs 4 widths"):
        UNetPlusPlus(widths=(4, 8), depth=3)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_pruned_network_equals_head_d(spatial_dims, depth):
    net = _tiny(spatial_dims, depth=3, num_classes=2)
    # make BatchNorm statistics non-trivial, as after training
    net.train()
    shape = (2, 1, 24, 24) if spatial_dims == 2 else (2, 1, 16, 16, 16)
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(shape) * 3 + 1)
    net.eval()
    x = torch.randn(shape)
    pruned = net.prune(depth)
    assert pruned.head_depths == (depth,)
    assert set(pruned.nodes.keys()) == {node_name(i, j) for i, j in nodes_for_depth(depth)}
    assert pruned.num_parameters() == net.num_parameters(depth)
    with torch.no_grad():
        diff = (pruned(x)[depth] - net(x)[depth]).abs().max().item()
    assert diff < 1e-5
    # the full network's state dict loads into the pruned one by name
    missing, unexpected = pruned.load_state_dict(net.state_dict(), strict=False)
    assert not missing and unexpected


def test_pruning_odd_sizes_matches_depth_limited_forward():
    net = _tiny()
    x = torch.randn(1, 1, 37, 29)
    with torch.no_grad():
        for d in (1, 2, 3):
            torch.testing.assert_close(net.prune(d)(x)[d], net(x, depths=[d])[d])


def test_parameter_counts_match_the_paper(capsys):
    """Paper (TMI 2019, Fig. 6): UNet++ L1..L4 have 0.1M / 0.5M / 2.2M / 9.0M parameters."""
    net = UNetPlusPlus(in_channels=1, num_classes=1, widths=(32, 64, 128, 256, 512), depth=4)
    paper = {1: 0.1e6, 2: 0.5e6, 3: 2.2e6, 4: 9.0e6}
    counts = {d: net.num_parameters(d) for d in paper}
    with capsys.disabled():
        print("\nUNet++ parameters:", {f"L{d}": f"{c / 1e6:.3f}M" for d, c in counts.items()})
    for d, expected in paper.items():
        assert abs(counts[d] - expected) / expected < 0.05, (d, counts[d])
        assert net.prune(d).num_parameters() == counts[d]


@pytest.mark.parametrize("norm", ["batch", "instance", "group"])
def test_norms_train_and_backpropagate(norm):
    net = UNetPlusPlus(widths=(4, 8, 16), depth=2, norm=norm)
    out = net(torch.randn(2, 1, 16, 16))
    sum(o.mean() for o in out.values()).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_encoder_parameters_are_the_first_column():
    net = _tiny(depth=2)
    encoder = {id(p) for p in net.encoder_parameters()}
    for i in range(3):
        assert all(id(p) in encoder for p in net.nodes[node_name(i, 0)].parameters())
    assert not any(id(p) in encoder for p in net.nodes[node_name(0, 1)].parameters())


def test_from_config_round_trip():
    net = _tiny(depth=3, num_classes=3, spatial_dims=3, norm="instance")
    again = UNetPlusPlus.from_config(net.config)
    assert again.config == net.config
    assert again.num_parameters() == net.num_parameters()


def test_unwrap_model_sees_through_compile_and_ddp_style_wrappers():
    net = _tiny(depth=2)

    class Wrapper(torch.nn.Module):  # as DistributedDataParallel: the network under .module
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    assert unwrap_model(net) is net
    assert unwrap_model(Wrapper(net)) is net
    assert unwrap_model(torch.compile(Wrapper(net))) is net  # compile of DDP: both layers
    assert unwrap_model(torch.nn.Sequential(net)) is not net  # other containers are not wrappers


@pytest.mark.parametrize(
    ("spatial_dims", "shape", "fmt"),
    [
        (2, (2, 1, 48, 40), torch.channels_last),
        (2, (2, 1, 48, 40), torch.contiguous_format),
        (3, (1, 1, 16, 16, 32), torch.channels_last_3d),
    ],
)
def test_kept_concat_buffer_gives_the_same_bits_and_is_reused(spatial_dims, shape, fmt):
    net = _tiny(spatial_dims)
    x = torch.randn(shape).contiguous(memory_format=fmt)
    with torch.no_grad():
        expected = net(x)  # the module as trained: a fresh torch.cat per node
    net.reuse_concat_buffer()
    buffer = net.nodes[node_name(0, 1)].concat
    assert buffer is net.nodes[node_name(0, 4)].concat  # one per network
    outputs = []
    for mode in (torch.inference_mode, torch.no_grad, torch.inference_mode):
        with mode():  # an inference tensor cannot be written outside inference mode
            outputs.append(net(x))
            outputs.append(net(x))
    for out in outputs:
        assert all(torch.equal(out[d], expected[d]) for d in expected)
    with torch.inference_mode():
        first = buffer._flat(10, torch.float32).data_ptr()
        assert buffer._flat(10, torch.float32).data_ptr() == first  # kept, not reallocated


def test_kept_concat_buffer_is_off_while_training_and_not_copied():
    import copy
    import pickle

    net = _tiny()
    net.reuse_concat_buffer()
    net.train()
    out = net(torch.randn(2, 1, 32, 32))
    sum(o.sum() for o in out.values()).backward()  # autograd keeps each concatenation
    assert net.nodes[node_name(0, 4)].block[0].weight.grad is not None
    for twin in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        ours, theirs = net.nodes[node_name(0, 1)].concat, twin.nodes[node_name(0, 1)].concat
        assert theirs is not ours and theirs is twin.nodes[node_name(0, 4)].concat

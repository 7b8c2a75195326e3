import pytest
import torch

from membench.archs import (
    ArchError,
    build_conv_stack,
    conv_stack_spec,
    minimum_resolution,
    parametric_spec,
    validate_arch,
)


def test_vgg8_matches_spec():
    spec = conv_stack_spec("vgg8")
    assert spec.channels == (128, 256, 256, 512, 512, 512, 512)
    assert spec.pool_after == {1, 3, 4, 5}
    # The channel list gives ~9.15M conv parameters (the paper's "5.5M" does not follow from it).
    assert spec.conv_parameter_count() == 9_148_416
    assert spec.layer_shapes(32) == [
        (128, 32, 32),
        (256, 32, 32),
        (256, 16, 16),
        (512, 16, 16),
        (512, 8, 8),
        (512, 4, 4),
        (512, 2, 2),
    ]


def test_vgg11_matches_spec():
    spec = conv_stack_spec("vgg11")
    assert spec.channels == (64, 128, 256, 256, 512, 512, 512, 512)
    assert spec.pool_after == {0, 1, 3, 5, 7}
    assert spec.conv_parameter_count() == 9_220_480
    assert [h for _, h, _ in spec.layer_shapes(224)] == [224, 112, 56, 56, 28, 28, 14, 14]


def test_built_module_has_the_counted_parameters_and_shapes():
    spec = conv_stack_spec("vgg11")
    stack = build_conv_stack("vgg11")
    assert sum(p.numel() for p in stack.parameters()) == spec.conv_parameter_count()
    out = stack(torch.zeros(1, 3, 32, 32))
    assert tuple(out.shape[1:]) == spec.layer_shapes(32)[-1]


def test_layers_walk_the_stack_with_no_propagation_after_the_last_layer():
    stack = build_conv_stack("vgg11", dropout=0.0)
    layers = stack.layers()
    assert [layer.index for layer in layers] == list(range(8))
    assert [layer.channels for layer in layers] == list(stack.spec.channels)
    assert [layer.is_last for layer in layers] == [False] * 7 + [True]
    assert layers[-1].propagate is None and stack.layer(-1).is_last
    assert all(layer.block is stack.blocks[i] for i, layer in enumerate(layers))
    assert all(layer.propagate is stack.propagate[i] for i, layer in enumerate(layers[:-1]))
    with pytest.raises(IndexError):
        stack.layer(8)
    # The layers only refer to the stack's modules: the same state_dict keys as ever.
    assert list(stack.state_dict()) == [
        f"blocks.{i}.0.{p}" for i in range(8) for p in ("weight", "bias")
    ]

    x = torch.randn(2, 3, 32, 32)
    by_layer = x
    for layer in layers:
        by_layer = layer(by_layer)
    torch.testing.assert_close(stack(x), by_layer)
    z = torch.randn(2, 512, 2, 2)
    assert layers[-1].next_input(z) is z  # nothing runs after the last layer
    assert layers[-2].next_input(z).shape == (2, 512, 2, 2)  # LayerNorm, no pool after layer 6


def test_parametric_naming_rule():
    spec = parametric_spec("vgg-d10-w256")
    assert spec.channels == (256,) * 10 and spec.pool_after == {1, 3, 5}
    assert parametric_spec("vgg-d4-w64-p1").pool_after == {1}
    assert parametric_spec("vgg-d6-w8-p0").pool_after == set()
    # Same width and pools: a shallower member is a prefix of a deeper one.
    assert parametric_spec("vgg-d8-w32").spatial_sizes(32)[:4] == parametric_spec(
        "vgg-d4-w32"
    ).spatial_sizes(32)


@pytest.mark.parametrize("name", ["vgg8", "vgg11", "vgg-d6-w16"])
def test_minimum_resolution_is_the_boundary(name):
    spec = conv_stack_spec(name)
    smallest = minimum_resolution(spec)
    validate_arch(name, smallest)
    with pytest.raises(ArchError, match="too small"):
        validate_arch(name, smallest - 1)


def test_unknown_arch_names_the_choices():
    with pytest.raises(ArchError, match="vgg8, vgg11"):
        validate_arch("vgg9", 32)
    with pytest.raises(ArchError, match="torchvision"):
        validate_arch("tv:not_a_model", 224)


def test_propagation_layernorm_is_channelwise():
    stack = build_conv_stack("vgg-d2-w8-p0", dropout=0.0)
    z = torch.randn(2, 8, 4, 4) * 5 + 3
    out = stack.layer(0).propagate(z)
    assert torch.allclose(out.mean(dim=1), torch.zeros(2, 4, 4), atol=1e-5)
    assert torch.allclose(out.var(dim=1, unbiased=False), torch.ones(2, 4, 4), atol=1e-3)


def test_cell_ids_keep_budgets_apart():
    from membench.schema import Cell
    from membench.units import format_bytes, parse_bytes

    assert (
        format_bytes(8 * 2**30) == "8GiB"
        and format_bytes(1536) == "1.5KiB"
        and format_bytes(1000) == "1000B"
    )
    assert parse_bytes(format_bytes(12 * 2**30)) == 12 * 2**30
    plain, budget = (
        Cell("bp", "vgg8", 32, 64),
        Cell("bp", "vgg8", 32, 64, device_mem_bytes=8 * 2**30),
    )
    assert plain.cell_id == "bp_vgg8_r32_b64_k10"
    assert budget.cell_id == "bp_vgg8_r32_b64_k10_mem8GiB"

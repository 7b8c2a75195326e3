"""Library workspaces: cuBLAS's size as torch 2.14.1 reads CUBLAS_WORKSPACE_CONFIG, and the
lowered matrix a convolution's workspace is measured against, derived by hand."""

from __future__ import annotations

import pytest

from membench.planning import workspace
from membench.planning.workspace import (
    ConvCall,
    conv_workspace_bytes,
    cublas_workspace_bytes,
    lowered_bytes,
    parse_cublas_config,
)

MIB = 2**20


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":4096:2:16:8", 2 * 4 * MIB + 8 * 16 * 1024),  # torch's default: 8 MiB + 128 KiB
        (":4096:8", 32 * MIB),  # its default on compute capability 9.x to 12.x
        (":16:8", 128 * 1024),  # the deterministic setting torch's docs name
        ("4096:8", None),  # no leading colon: torch finds no pair and keeps its default
        ("", None),
    ],
)
def test_cublas_workspace_config_is_read_as_torch_reads_it(text, expected):
    assert parse_cublas_config(text) == expected


def test_the_default_depends_on_the_compute_capability():
    assert cublas_workspace_bytes((8, 0))[0] == 8 * MIB + 128 * 1024
    assert cublas_workspace_bytes((8, 9))[0] == 8 * MIB + 128 * 1024
    for major in (9, 10, 12):
        assert cublas_workspace_bytes((major, 0))[0] == 32 * MIB
    assert "CublasHandlePool.cpp (torch 2.14.1)" in cublas_workspace_bytes((8, 0))[1]


def test_the_32mib_rule_can_fail():
    # a mutant that gave every GPU the Hopper default would be caught by the test above
    assert cublas_workspace_bytes((8, 0))[0] != parse_cublas_config(workspace.CUBLAS_32MIB_CONFIG)


def test_the_lowered_matrix_of_a_convolution_by_hand():
    # VGG11's second conv at 224: 64 -> 128 channels, 3x3, 112x112 output, batch 16, fp32:
    # 16 images x (64 channels x 9 taps) x 112*112 positions x 4 bytes
    call = ConvCall("forward", (16, 64, 112, 112), (16, 128, 112, 112), (3, 3), 4)
    assert lowered_bytes(call) == 16 * 64 * 9 * 112 * 112 * 4
    # stride 2: the output's positions, the input's channels
    strided = ConvCall("forward", (16, 3, 224, 224), (16, 64, 112, 112), (7, 7), 2)
    assert lowered_bytes(strided) == 16 * 3 * 49 * 112 * 112 * 2
    # a transposed convolution upsamples: the output is the high-resolution side
    up = ConvCall("forward", (2, 8, 4, 4), (2, 16, 8, 8), (2, 2), 4, transposed=True)
    assert lowered_bytes(up) == 2 * 16 * 4 * 4 * 4 * 4
    # the backward passes share the forward's matrix
    back = ConvCall("backward_weight", (16, 64, 112, 112), (16, 128, 112, 112), (3, 3), 4)
    assert lowered_bytes(back) == lowered_bytes(call)
    assert conv_workspace_bytes(call, 0.5) == lowered_bytes(call) // 2
    assert conv_workspace_bytes(call, 0.0) == 0

"""transformers models as ``hf:`` archs: token cells (``seq``), a config with random weights and
no download, every BP tool on them, their blocks as a layer stack, and a CPU estimate equal to
the CPU measurement to the byte (docs/sequence-models.md)."""

from __future__ import annotations

import socket
import sys

import pytest
import torch
from helpers import usage_error
from typer.testing import CliRunner

from membench.archs import ArchError, build_arch, takes_tokens, validate_arch
from membench.cli import app
from membench.config import ConfigError, build_config, expand_grid
from membench.schema import Cell, CellResult

pytest.importorskip("transformers")

# Tiny configs: two blocks of width 32 and a vocabulary of 128 keep a step in milliseconds.
VOCAB = "vocab_size=128&bos_token_id=0&eos_token_id=0"
GPT = f"hf:gpt2?n_layer=2&n_embd=32&n_head=4&{VOCAB}"
LLAMA = (
    "hf:llama?num_hidden_layers=2&hidden_size=32&num_attention_heads=4&num_key_value_heads=2"
    f"&intermediate_size=64&{VOCAB}"
)
BERT = (
    "hf:bert?num_hidden_layers=2&hidden_size=32&num_attention_heads=4&intermediate_size=64"
    "&vocab_size=128"
)


def test_without_transformers_an_hf_arch_says_how_to_get_it(monkeypatch):
    from membench.archs import hf

    monkeypatch.setitem(sys.modules, "transformers", None)  # an environment without it
    hf._config.cache_clear()
    with pytest.raises(
        ArchError, match=r"transformers is not installed: pip install 'membench\[hf"
    ):
        validate_arch("hf:gpt2", seq=8)
    line = usage_error(
        CliRunner().invoke(app, ["sweep", "--arch", "hf:gpt2", "--seq", "8", "--out", "x"])
    )
    assert "transformers is not installed" in line
    hf._config.cache_clear()


def test_a_config_takes_overrides_and_refuses_what_it_does_not_have(tmp_path):
    from membench.archs.hf import hf_config, max_sequence, vocabulary_size

    config = hf_config("hf:llama?hidden_size=64&num_hidden_layers=3&rms_norm_eps=1e-5")
    assert (config.hidden_size, config.num_hidden_layers, config.rms_norm_eps) == (64, 3, 1e-5)
    assert vocabulary_size(GPT) == 128 and max_sequence(GPT) == 1024  # GPT-2's n_positions
    with pytest.raises(ArchError, match="no field 'hiden_size'"):
        hf_config("hf:llama?hiden_size=64")  # a typo transformers would silently keep
    with pytest.raises(ArchError, match="unknown transformers model type 'not-a-model'"):
        hf_config("hf:not-a-model")
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "gpt2", "n_layer": 3, "n_embd": 32, "n_head": 4}')
    assert hf_config(f"hf:{path}?n_layer=1").n_layer == 1
    with pytest.raises(ArchError, match="not a transformers config"):
        (tmp_path / "bad.json").write_text("{}")
        hf_config(f"hf:{tmp_path / 'bad.json'}")


def test_building_reaches_no_network(monkeypatch):
    """No download: the config and the model come from transformers' code alone (a socket that
    refuses to connect would fail any hub request)."""

    def refuse(*args, **kwargs):
        raise OSError("membench must not reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = build_arch(GPT, 4)
    assert task.objective == "causal-lm" and task.model.config.vocab_size == 128
    assert build_arch(BERT, 4).objective == "masked-lm"  # an encoder's own objective
    model = build_arch(GPT, 5, objective="classification").model
    assert model.config.num_labels == 5


def test_token_cells_have_a_seq_and_no_res_and_keep_image_ids():
    token = Cell("bp", GPT, 32, 4, seq=16, objective="classification")
    assert token.res is None and token.takes_tokens
    assert token.cell_id == f"bp_{GPT}_s16_b4_k10_classification"
    image = Cell("bp", "vgg8", 32, 4)
    assert image.cell_id == "bp_vgg8_r32_b4_k10"  # as every earlier membench named it
    for cell in (token, image):
        row = CellResult(cell, "cpu", "cpu", step_ms=[100.0]).row()
        again = CellResult.from_row({k: "" if v is None else str(v) for k, v in row.items()})
        assert again.cell == cell and again.row()["cell_id"] == cell.cell_id
    assert CellResult(token, "cpu", "cpu", step_ms=[100.0]).tokens_per_s == pytest.approx(640)
    assert CellResult(image, "cpu", "cpu", step_ms=[100.0]).tokens_per_s is None
    with pytest.raises(ConfigError, match="needs an input"):
        Cell("bp", "vgg8", None, 4)


def test_a_grid_gives_each_arch_its_own_input():
    cells = expand_grid(
        method="bp", arch=[GPT, "vgg-d2-w8"], res=[8, 16], seq=[8, 16], batch=2, steps=1
    )
    inputs = sorted((c.arch == GPT, c.res, c.seq) for c in cells)
    assert inputs == [(False, 8, None), (False, 16, None), (True, None, 8), (True, None, 16)]
    assert takes_tokens(GPT) and not takes_tokens("vgg8")


@pytest.mark.parametrize(
    "axes, message",
    [
        (dict(arch="vgg8", seq=16), "--seq applies to token models"),
        (dict(arch="vgg8", objective="causal-lm"), "--objective applies to token models"),
        (dict(arch=GPT), "takes token sequences: give their length, --seq N"),
        (dict(arch=GPT, seq=4096), "1024 positions"),
        (dict(arch=GPT, seq=8, objective="masked-lm"), "has heads for causal-lm, classification"),
        (dict(arch=GPT, seq=8, method="ff-pipelined"), "give --objective classification"),
        (dict(arch=GPT, seq=8, method="bp", memory_format="channels_last"), "images only"),
        (dict(arch=GPT, seq=8, method="bp-pp", devices=2), "not hf:gpt2"),
    ],
)
def test_what_a_token_grid_cannot_run_is_one_line(axes, message):
    with pytest.raises(ConfigError, match=message):
        expand_grid(**{"batch": 4, **axes})


@pytest.mark.parametrize("arch", [GPT, LLAMA, BERT])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_layer_stack_of_a_transformer_is_its_base_model(arch, attention):
    """Cut at its blocks, with each block's arguments rebuilt (mask, positions, rotary tables),
    the stack computes exactly what the model's own forward does."""
    torch.manual_seed(0)
    task = build_arch(
        arch, 4, dropout=False, objective="classification", attn_implementation=attention
    )
    stack = task.as_layer_stack()
    ids = torch.randint(0, 128, (2, 12))
    assert len(stack) == 2 and stack.spec.channels == (32, 32)
    torch.testing.assert_close(
        stack(ids), task.model.base_model(input_ids=ids).last_hidden_state, rtol=0, atol=0
    )
    owned = {id(p) for block in stack.blocks for p in block.parameters()}
    base = {id(p) for name, p in task.model.base_model.named_parameters() if "pooler" not in name}
    assert owned == base  # every parameter of the blocks, embeddings and final norm, once


def test_a_block_argument_that_cannot_be_rebuilt_is_refused(monkeypatch):
    """The check of the rebuilt arguments can fail: a causal mask rebuilt wrong (here, none)
    where the eager model passes one is refused when the stack is built."""
    from transformers import masking_utils

    task = build_arch(GPT, 4, objective="classification", attn_implementation="eager")
    monkeypatch.setattr(masking_utils, "create_causal_mask", lambda **kwargs: None)
    with pytest.raises(ArchError, match="attention_mask membench rebuilds"):
        task.as_layer_stack()


def test_checkpointing_wraps_each_block_of_the_block_list():
    from membench.archs import block_list
    from membench.multidevice.bp_runners import shard_units
    from membench.runners.saved_tensors import Checkpointed, checkpoint_torchvision_stages

    task = build_arch(LLAMA, 4)
    name, blocks = block_list(task)
    assert name == "model.model.layers"
    assert [type(u).__name__ for u in shard_units(task)] == ["LlamaDecoderLayer"] * 2
    checkpoint_torchvision_stages(task, "selective")
    assert all(isinstance(block, Checkpointed) for block in task.model.model.layers)


TOKEN_METHODS = ["bp", "bp-ckpt", "bp-sac", "bp-offload", "bp-accum"]


@pytest.mark.parametrize("method", ["bp", "bp-ckpt", "bp-sac", "bp-offload"])
def test_a_small_gpt_measured_on_the_cpu_equals_its_cpu_estimate_to_the_byte(method):
    """The tracker's peak of a real CPU step and the estimate's on fake tensors agree exactly,
    dropout on (checkpointing recomputes it with the same RNG state). At batch 8, seq 128 the
    activations set the peak, so it is each method's own (docs/sequence-models.md, "The CPU
    estimate is the CPU measurement"); at batch 2, seq 16, AdamW's update set all four."""
    from membench.measure.devices import CpuDevice
    from membench.measure.protocol import run_cell
    from membench.planning.estimate import estimate_cell

    cell = Cell(method, GPT, None, 8, seq=128, warmup=1, steps=1)
    measured = run_cell(cell, CpuDevice(), count_flops=False)
    estimated = estimate_cell(cell, "cpu", count_flops=False)
    assert measured.status == "ok" and estimated.status == "estimated"
    assert measured.peak_allocated_bytes == estimated.peak_allocated_bytes
    assert measured.breakdown == estimated.breakdown
    assert measured.breakdown.activations > measured.peak_allocated_bytes / 2
    assert measured.tokens_per_s == pytest.approx(measured.imgs_per_s * 128)


def test_without_the_real_tensor_answer_the_checkpointed_estimate_is_wrong(monkeypatch):
    """The equality can fail: on fake tensors transformers cannot read that the positions are
    not packed, and builds a causal mask a real step never has, which checkpointing keeps."""
    import contextlib

    from membench.measure.devices import CpuDevice
    from membench.measure.protocol import run_cell
    from membench.planning import estimate

    monkeypatch.setattr(estimate, "as_on_real_tensors", contextlib.nullcontext)
    cell = Cell("bp-ckpt", GPT, None, 4, seq=32, warmup=1, steps=1)
    measured = run_cell(cell, CpuDevice(), count_flops=False)
    estimated = estimate.estimate_cell(cell, "cpu", count_flops=False)
    mask = 4 * 32 * 32  # B x 1 x S x S booleans, kept as a checkpointed block's input
    assert estimated.peak_allocated_bytes == measured.peak_allocated_bytes + mask


@pytest.mark.slow  # ten fake steps of a transformers model and their FLOP counts
def test_every_bp_tool_and_the_layer_local_methods_estimate_a_token_cell():
    from membench.planning.estimate import estimate_cell

    every = dict(arch=GPT, seq=16, batch=4, objective="classification", warmup=1, steps=1)
    cells = [
        *build_config(
            method=[*TOKEN_METHODS, "ff-naive", "ff-pipelined", "bp-deepsup"],
            precision="bf16",
            **every,
        ).cells,
        *build_config(
            method=["bp", "ff-pipelined"], grads="released", optimizer_state="host", **every
        ).cells,
    ]
    results = [estimate_cell(cell, "cuda") for cell in cells]
    failed = [(r.cell_id, r.error) for r in results if r.status != "estimated"]
    assert not failed and len(results) == 10
    assert all(r.flops_per_step > 0 for r in results)


@pytest.mark.slow  # gloo ranks
def test_ddp_and_fsdp_run_a_token_cell_on_two_ranks():
    from membench.multidevice.fake_group import estimate_ranks

    for method in ("bp-ddp", "bp-fsdp"):
        result = estimate_ranks(Cell(method, GPT, None, 4, seq=16, devices=2, warmup=1, steps=1))
        assert result.status == "estimated", result.error


def test_verify_holds_the_layer_local_methods_to_their_checks_on_a_transformer():
    """The token stack's layer isolation, and ff-pipelined's per-layer gradients and first-step
    losses against ff-naive, on a tiny GPT (classification)."""
    from membench.verify import VerifySetup
    from membench.verify.checks import (
        check_first_step_losses,
        check_layer_gradients,
        check_layer_isolation,
    )

    setup = VerifySetup(arch=GPT, batch=4, seq=8, classes=4, objective="classification")
    results = [
        check_layer_isolation("ff-pipelined", setup),
        check_layer_gradients("ff-pipelined", "ff-naive", setup),
        check_layer_gradients("ff-pipelined", "ff-naive", setup, micro_batch=2),
        check_first_step_losses("ff-pipelined", "ff-naive", setup),
    ]
    assert all(r.passed for r in results), [r.detail for r in results]


def test_layer_isolation_fails_on_a_token_stack_whose_block_reads_another(monkeypatch):
    """The check can fail on a transformer's stack: a second block that also adds the first
    block's token embedding (a shortcut across the unit boundary) is caught."""
    from membench.archs import HFTask
    from membench.verify import VerifySetup
    from membench.verify.checks import check_layer_isolation

    original = HFTask.as_layer_stack

    def leaking(self):
        stack = original(self)
        second, embedding = stack.blocks[1], stack.blocks[0].entry.stem["wte"]
        inner = second.forward
        second.forward = lambda x: inner(x) + embedding.weight[:1].sum()
        return stack

    monkeypatch.setattr(HFTask, "as_layer_stack", leaking)
    setup = VerifySetup(arch=GPT, batch=4, seq=8, classes=4, objective="classification")
    result = check_layer_isolation("ff-pipelined", setup)
    assert not result.passed and "1->0" in result.detail


@pytest.mark.slow  # two searches, a dozen estimates
def test_fit_searches_the_batch_or_the_sequence_length():
    from membench.planning.estimate import estimate_cell
    from membench.planning.fit import fit_batch, fit_seq

    # fit judges the device total (context included) by default: the budget is one
    budget = estimate_cell(Cell("bp", GPT, None, 6, seq=32), "cuda").device_total_bytes
    fit = fit_batch("bp", GPT, None, budget, seq=32, precision="bf16", max_batch=64)
    assert fit.batch is not None and fit.next_peak_bytes > budget >= fit.peak_bytes
    longest = fit_seq("bp", GPT, 6, budget)
    assert longest.seq >= 32 and longest.next_peak_bytes > budget >= longest.peak_bytes
    assert longest.next_seq == longest.seq + 1


def test_a_token_sweep_reports_samples_and_tokens_per_second(tmp_path):
    """The sweep's table names a token cell's input (s16) and its tokens/s; the row has both."""
    from membench.results import read_rows

    result = CliRunner().invoke(
        app,
        [
            "sweep",
            "--arch",
            GPT,
            "--seq",
            "16",
            "--batch",
            "2",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--isolation",
            "none",
            "--out",
            str(tmp_path),
        ],
        terminal_width=300,
    )
    assert result.exit_code == 0, result.output
    assert "tokens/s" in result.output and "s16" in result.output
    (row,) = read_rows(tmp_path / "cells.csv")[1]
    assert row["res"] == "" and row["seq"] == "16"
    assert float(row["tokens_per_s"]) == pytest.approx(16 * float(row["imgs_per_s"]))


def test_compare_matches_token_cells_on_seq_and_the_report_says_it_leaves_them_out(tmp_path):
    """A token row is compared with the row of the same sequence length only, and a report of a
    folder that holds one draws its image cells and says how many token rows it left out."""
    import shutil

    from membench.compare import compare_results
    from membench.report.load import load_cells

    def sweep(out, *axes: str) -> None:
        args = ["sweep", "--estimate", "--device", "cpu", "--isolation", "none", "--batch", "2"]
        result = CliRunner().invoke(app, [*args, *axes, "--out", str(out)])
        assert result.exit_code == 0, result.output

    baseline, new = tmp_path / "baseline", tmp_path / "new"
    sweep(baseline, "--arch", f"vgg8,{GPT}", "--res", "32", "--seq", "16")
    shutil.copytree(baseline, new)
    sweep(new, "--arch", GPT, "--seq", "32")
    comparison = compare_results(baseline, new)
    assert sorted(row.cell_id for row in comparison.rows) == [
        f"bp_{GPT}_s16_b2_k10",
        "bp_vgg8_r32_b2_k10",
    ]
    assert [row["cell_id"] for row in comparison.only_in_new] == [f"bp_{GPT}_s32_b2_k10"]
    assert comparison.passed  # estimates are deterministic: the same cells, the same bytes
    loaded = load_cells([new])
    assert list(loaded.cells["arch"]) == ["vgg8"]
    assert any("2 token-sequence row(s)" in note for note in loaded.notes)


@pytest.mark.slow  # a hundred cells validated against a transformers model: seconds
def test_plan_tries_every_bp_tool_on_a_token_cell_and_layer_local_only_for_classification():
    from membench.planning.plan import candidate_cells

    families = {}
    for objective in ("causal-lm", "classification"):
        cells = candidate_cells(GPT, None, 8, seq=64, objective=objective)
        assert {(c.res, c.seq, c.objective) for c in cells} == {(None, 64, objective)}
        families[objective] = {c.method for c in cells}
    bp_tools = {"bp", "bp-accum", "bp-ckpt", "bp-offload", "bp-sac"}
    assert families == {"causal-lm": bp_tools, "classification": {*bp_tools, "ff-pipelined"}}

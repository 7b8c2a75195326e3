"""FLOPs per step, achieved TFLOP/s and MFU: counted on fake tensors, checked against the
analytic convolution count, and held against a peak that says where it came from."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from membench.archs import conv_stack_spec
from membench.execute.sweep import run_sweep
from membench.measure.calibrate import CALIBRATED_SOURCES
from membench.measure.flops import USER, device_peak_spec, throughput_bound
from membench.measure.protocol import build_runner, count_step_flops, make_batch
from membench.runners import SINGLE_DEVICE_METHODS
from membench.schema import Cell, CellResult

ARCH, RES, BATCH, CLASSES = "vgg-d3-w8-p0", 8, 4, 10  # no pools: every layer sees 8x8


def conv_forward_flops(arch: str, res: int, batch: int) -> list[int]:
    """2 * B * Cin * Cout * 9 * H * W per 3x3 conv layer (stride 1, padding 1)."""
    spec = conv_stack_spec(arch)
    c_in, out = spec.in_channels, []
    for c_out, size in zip(spec.channels, spec.spatial_sizes(res)):
        out.append(2 * batch * c_in * c_out * 9 * size * size)
        c_in = c_out
    return out


def flops_by_op(cell: Cell) -> dict[str, int]:
    with torch.random.fork_rng(devices=[]), FakeTensorMode():
        runner = build_runner(cell, "cpu")
        images, labels = make_batch(cell, torch.device("cpu"))
        with FlopCounterMode(display=False) as counter:
            runner.step(images, labels)
    return {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}


def test_bp_flops_are_the_analytic_conv_count_plus_the_heads_share():
    forward = conv_forward_flops(ARCH, RES, BATCH)
    # backward: the weight gradient of every layer, the input gradient of all but layer 0
    analytic = sum(forward) + sum(forward) + sum(forward[1:])
    head = 3 * 2 * BATCH * conv_stack_spec(ARCH).channels[-1] * CLASSES  # fwd, grad W, grad x
    counted = count_step_flops(Cell("bp", ARCH, RES, BATCH, classes=CLASSES))
    assert analytic <= counted <= analytic + head
    # the check can fail: a count without the input gradients is off by more than the heads
    assert not (counted <= sum(forward) * 2 + head)


def test_ff_pipelined_has_no_input_gradient_flops_and_bp_ckpt_recomputes():
    forward = sum(conv_forward_flops(ARCH, RES, BATCH))
    ff = flops_by_op(Cell("ff-pipelined", ARCH, RES, BATCH, classes=CLASSES))
    assert ff["convolution"] == forward and ff["convolution_backward"] == forward  # grad W only
    bp = flops_by_op(Cell("bp", ARCH, RES, BATCH, classes=CLASSES))
    assert bp["convolution_backward"] > forward  # grad W and grad x
    ckpt = flops_by_op(Cell("bp-ckpt", ARCH, RES, BATCH, classes=CLASSES))
    assert ckpt["convolution"] == 2 * forward  # every block's forward runs again in backward
    assert ckpt["convolution_backward"] == bp["convolution_backward"]
    naive = flops_by_op(Cell("ff-naive", ARCH, RES, BATCH, classes=CLASSES))
    assert naive["convolution"] == 2 * forward  # the second, no_grad conv pass


def test_every_micro_batch_is_counted():
    whole = count_step_flops(Cell("bp", ARCH, RES, 8, classes=CLASSES))
    split = count_step_flops(Cell("bp-accum", ARCH, RES, 8, micro_batch=2, classes=CLASSES))
    assert split == whole


def test_achieved_tflops_and_mfu_follow_from_the_row():
    cell = Cell("bp", ARCH, RES, BATCH)
    result = CellResult(
        cell,
        "cpu",
        "x",
        step_ms=[2.0, 2.0, 2.0],
        flops_per_step=4 * 10**9,
        peak_tflops=4.0,
        peak_source=USER,
        peak_precision="fp32",
    )
    assert result.achieved_tflops == pytest.approx(2.0)  # 4 GFLOP in 2 ms
    assert result.mfu == pytest.approx(0.5)
    again = CellResult.from_row(result.row())
    assert again.row() == result.row() and again.mfu == pytest.approx(0.5)
    assert CellResult(cell, "cpu", "x", step_ms=[2.0], flops_per_step=10).mfu is None  # no peak
    assert throughput_bound(2e12, 128, 100.0) == pytest.approx(6400.0)


def test_cpu_calibration_gives_an_mfu_strictly_between_0_and_1(tmp_path):
    [result] = run_sweep(
        [Cell("bp", "vgg-d2-w32", 16, 8, warmup=1, steps=3)], "cpu", tmp_path, isolation="none"
    )
    assert result.peak_source in CALIBRATED_SOURCES and result.peak_tflops > 0
    assert 0 < result.mfu < 1


def test_the_peak_comes_from_the_user_the_datasheet_or_the_cpu_and_an_unknown_gpu_says_why():
    assert device_peak_spec("cpu", "any", user_tflops=7.5).source == USER
    unknown = device_peak_spec("cuda", "NVIDIA Imaginary 9000")
    assert unknown.tflops is None and "--peak-tflops" in unknown.note
    assert 0 < device_peak_spec("cpu", "any").tflops < 100


def test_an_unknown_peak_is_said_once_per_sweep_and_a_users_peak_is_recorded(tmp_path, monkeypatch):
    from membench.execute.sweep import SweepProgress
    from membench.measure import flops

    class Notes(SweepProgress):
        def __init__(self):
            self.notes = []

        def note(self, text):
            self.notes.append(text)

    monkeypatch.setattr(
        flops,
        "device_peak_spec",
        lambda kind, name, user=None, precision="fp32": (
            flops.PeakSpec(user, USER, precision)
            if user
            else flops.PeakSpec(None, note="no peak for this device")
        ),
    )
    cells = [Cell("bp", ARCH, RES, b, warmup=0, steps=2) for b in (2, 4)]
    progress = Notes()
    results = run_sweep(cells, "cpu", tmp_path / "a", isolation="none", progress=progress)
    assert progress.notes == ["no peak for this device"]
    assert all(r.flops_per_step and r.mfu is None and r.peak_source == "" for r in results)
    results = run_sweep(cells, "cpu", tmp_path / "b", isolation="none", peak_tflops=2.0)
    assert all(r.peak_tflops == 2.0 and r.peak_source == USER and r.mfu > 0 for r in results)


SPLITTING = ("bp-accum", "bp-pp", "ff-pp")
MULTI_DEVICE = ("bp-ddp", "bp-fsdp", "bp-pp", "ff-pp")


def every_method_cell(method: str, **options) -> Cell:
    """A small cell of any built-in method (two ranks for one that spans devices)."""
    micro = 2 if method in SPLITTING else None
    devices = 2 if method in MULTI_DEVICE else 1
    return Cell(method, ARCH, RES, BATCH, micro, devices=devices, warmup=1, steps=1, **options)


def fresh_flops(cell: Cell) -> list[int]:
    """Each rank's FLOPs counted on a fake step of its own under FlopCounterMode, uncached."""
    from membench.measure.protocol import _fake_step_flops
    from membench.multidevice.fake_group import fake_group

    if cell.devices == 1:
        return [_fake_step_flops(cell)]
    counts = []
    for rank in range(cell.devices):
        with fake_group(rank, cell.devices):
            counts.append(_fake_step_flops(cell))
    return counts


@pytest.mark.parametrize("method", [*SINGLE_DEVICE_METHODS, *MULTI_DEVICE])
def test_the_estimate_counts_on_its_tracked_step_what_flop_counter_mode_counts(method):
    """An estimate counts its FLOPs on its own tracked step (flops.FlopTally); they are
    FlopCounterMode's on a fake step of their own, rank by rank."""
    from membench.multidevice.fake_group import estimate_ranks
    from membench.planning.estimate import estimate_cell

    cell = every_method_cell(method)
    result = estimate_ranks(cell) if cell.devices > 1 else estimate_cell(cell, "cuda")
    assert result.status == "estimated", result.error
    counted = [r.flops_per_step for r in (result.ranks or [result])]
    assert counted == fresh_flops(cell) and all(counted)


@pytest.mark.parametrize("method", ["bp", "ff-pipelined"])
def test_the_cpu_tracker_pass_counts_what_fake_tensors_count(method):
    from membench.measure.devices import CpuDevice
    from membench.measure.protocol import run_cell

    cell = every_method_cell(method)
    assert run_cell(cell, CpuDevice()).flops_per_step == fresh_flops(cell)[0]


def flop_invariant_variants(cell: Cell) -> list[Cell]:
    """``cell`` with each FLOP-invariant setting (protocol.FLOP_INVARIANT_SETTINGS) changed,
    where the runner accepts the change; compile is left out: the count is eager by
    construction (count_step_flops counts a compiled cell's eager step)."""
    from dataclasses import replace

    from membench.config import ConfigError, expand_grid
    from membench.measure.protocol import FLOP_INVARIANT_SETTINGS

    values = {
        "precision": ["bf16", "fp16"],
        "memory_format": ["channels_last"],
        "grads": ["released"],
        "optimizer_state": ["host"],
        "device_mem_bytes": [2**30],
        "warmup": [3],
        "steps": [7],
    }
    assert set(values) | {"compile"} == set(FLOP_INVARIANT_SETTINGS)
    variants = []
    for name, options in values.items():
        for value in options:
            changed = replace(cell, **{name: value})
            try:
                expand_grid(**changed.settings())
            except ConfigError:  # a combination the runner refuses
                continue
            variants.append(changed)
    return variants


@pytest.mark.parametrize("method", [*SINGLE_DEVICE_METHODS, *MULTI_DEVICE])
def test_the_settings_the_flop_key_leaves_out_do_not_change_the_count(method):
    """count_step_flops keeps one count per flops_key: every setting the key leaves out must
    leave each rank's count as it is, for every built-in method."""
    from membench.measure.protocol import flops_key

    cell = every_method_cell(method)
    expected, counted = fresh_flops(cell), 0
    for variant in flop_invariant_variants(cell):
        assert flops_key(variant) == flops_key(cell)
        try:
            flops = fresh_flops(variant)
        except NotImplementedError:  # FSDP2 refuses channels_last parameters: no step at all
            continue
        assert flops == expected, variant.cell_id
        counted += 1
    assert counted >= 4


def test_a_setting_the_key_keeps_changes_the_count():
    """The check above can fail: were the batch or the method left out of the key, a cell
    would get another cell's count."""
    from dataclasses import replace

    from membench.measure.protocol import flops_key

    cell = every_method_cell("bp")
    for changed in (replace(cell, batch=2 * BATCH), replace(cell, method="bp-ckpt")):
        assert flops_key(changed) != flops_key(cell)
        assert fresh_flops(changed) != fresh_flops(cell)


# -- bounds for estimates: the report and fit --------------------------------------------------
def test_a_report_with_a_gpu_bounds_the_throughput_of_estimates(tmp_path):
    from membench.execute.sweep import estimate_sweep
    from membench.measure.flops import resolve_gpu
    from membench.report import build_report, load_cells, make_figures
    from membench.report.render import add_throughput_bound

    cells = [
        Cell(m, ARCH, RES, b, classes=CLASSES, warmup=1, steps=1)
        for m in ("bp", "ff-pipelined")
        for b in (2, 4)
    ]
    results = estimate_sweep(cells, "cuda", tmp_path / "r", isolation="none")
    name, peak = resolve_gpu("H200")
    assert name == "NVIDIA H200" and peak.precision in ("tf32", "fp32")
    loaded = load_cells([tmp_path / "r"])
    add_throughput_bound(loaded, name, {"fp32": (peak.tflops, peak.precision)})
    [figure] = [f for f in make_figures(loaded.cells) if f.kind == "estimates"]
    bars = {bar.get_gid(): bar for ax in figure.figure.axes for bar in ax.patches if bar.get_gid()}
    flops = {r.cell.batch: r.flops_per_step for r in results if r.cell.method == "ff-pipelined"}
    assert [bars[f"bound:ff-pipelined b{b}"].get_width() for b in (2, 4)] == pytest.approx(
        [throughput_bound(flops[b], b, peak.tflops) for b in (2, 4)]
    )
    report = build_report(
        [tmp_path / "r"], tmp_path / "out", gpu=(name, {"fp32": (peak.tflops, peak.precision)})
    )
    text = report.read_text()
    assert "imgs/s bound" in text and "FLOPs \u00f7 bp" in text and "NVIDIA H200" in text


def test_report_and_fit_take_a_gpu_or_a_device_profile_and_refuse_an_unknown_one(tmp_path):
    from helpers import usage_error
    from typer.testing import CliRunner

    from membench.cli import app
    from membench.measure.flops import resolve_gpu

    assert resolve_gpu("laptop-8gb")[0] == "NVIDIA GeForce RTX 4060 Laptop GPU"
    cli = CliRunner()
    fit = cli.invoke(
        app,
        [
            "fit",
            "--arch",
            "vgg-d2-w8",
            "--res",
            "8",
            "--device-mem",
            "4MiB",
            "--method",
            "bp",
            "--max-batch",
            "8",
            "--gpu",
            "RTX 4090",
            "--fit-by",
            "allocated",  # 4 MiB holds the tensors, not a CUDA context (device-total.md)
        ],
    )
    assert fit.exit_code == 0, fit.output
    assert "imgs/s bound" in fit.output and "NVIDIA GeForce RTX 4090" in fit.output
    expected = throughput_bound(
        count_step_flops(Cell("bp", "vgg-d2-w8", 8, 8)), 8, resolve_gpu("RTX 4090")[1].tflops
    )
    assert f"{expected:,.0f}" in fit.output
    for command in (
        ["fit", "--device-mem", "1GiB", "--gpu", "Voodoo 5"],
        ["report", str(tmp_path), "--gpu", "Voodoo 5"],
    ):
        assert "unknown GPU 'Voodoo 5'" in usage_error(cli.invoke(app, command))


def test_an_fp16_step_counts_the_flops_of_its_bf16_step():
    # fp16's GradScaler reads a value fake tensors cannot give; its FLOPs are bf16's, not None.
    from membench.measure.protocol import count_step_flops
    from membench.schema import Cell

    cells = {
        p: Cell(method="bp", arch="vgg-d3-w16", res=16, batch=4, precision=p)
        for p in ("bf16", "fp16")
    }
    assert count_step_flops(cells["fp16"]) == count_step_flops(cells["bf16"]) > 0

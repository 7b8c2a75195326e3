"""``membench device calibrate``: measure what a card holds besides a step's tensors, and write it
as a device profile (docs/device-total.md, "Calibrating a card").

On one CUDA device, in this process (which must not have touched CUDA yet) and one child:

- ``memory``: ``torch.cuda.mem_get_info`` total;
- ``usable``: ``mem_get_info`` free right after CUDA initialises, plus this process's context
  (which ``mem_get_info`` already counts as used): what one process can hold on the card now;
- ``context``: what the process holds outside the caching allocator after a small training step
  (conv, linear, AdamW, backward), NVML's figure for the process less ``memory_reserved``;
  ``context_eager`` the same in a child process with ``CUDA_MODULE_LOADING=EAGER``;
- ``cublas_workspace``: what ``torch._C._cuda_clearCublasWorkspaces()`` frees after that step,
  per workspace (torch's own ``_cuda_getCublasWorkspaceSize``), and how many there were;
- ``conv_workspace_off`` / ``conv_workspace_on``: for each convolution of ``CONV_SHAPES`` and
  each of its three passes, with ``cudnn.benchmark`` off and on (on: the second call, after the
  search), the allocator's peak during the call less what was allocated before and the call's
  outputs, as a ratio of the call's lowered matrix (``planning.workspace.lowered_bytes``); the
  profile takes the largest ratio, so it bounds the calibrated shapes.

``CardMeasurement`` is plain data, so ``profile_text`` (the TOML written) is tested on the CPU
from a made-up measurement; the measuring itself needs a GPU (``pytest -m gpu``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..durable import write_text
from ..units import format_size, slug
from .device_profiles import DeviceProfileError, parse_device_table

# (batch, in channels, out channels, spatial size, kernel, stride): shapes of the classifiers
# membench plans for (VGG and ResNet stems, 3x3 and 1x1 convs deep in a net), small enough to
# calibrate on an 8 GiB card in seconds.
CONV_SHAPES = (
    (16, 3, 64, 224, 3, 1),
    (16, 64, 64, 112, 3, 1),
    (16, 128, 128, 56, 3, 1),
    (16, 256, 256, 28, 3, 1),
    (16, 3, 64, 224, 7, 2),
    (16, 256, 1024, 14, 1, 1),
)
CHILD_FLAG = "--membench-context-child"


@dataclass
class ConvWorkspace:
    """One calibrated convolution pass: its shape, the pass, the mode and what it took."""

    shape: tuple[int, ...]
    kind: str  # forward | backward_data | backward_weight
    benchmark: bool
    workspace_bytes: int
    lowered_bytes: int

    @property
    def ratio(self) -> float:
        return self.workspace_bytes / self.lowered_bytes if self.lowered_bytes else 0.0


@dataclass
class CardMeasurement:
    """What ``measure_card`` found on one card (module docstring). Bytes."""

    gpu: str
    compute_capability: tuple[int, int]
    memory: int
    usable: int
    context: int
    context_eager: int | None
    cublas_workspace: int
    cublas_workspaces: int  # how many the training step held
    convs: list[ConvWorkspace] = field(default_factory=list)
    torch_version: str = ""
    driver: str = ""
    when: str = ""

    def conv_ratio(self, benchmark: bool) -> float:
        """The largest ratio over the calibrated convolutions, benchmark off or on."""
        ratios = [c.ratio for c in self.convs if c.benchmark == benchmark]
        return max(ratios, default=0.0)


def _measured(what: str, m: CardMeasurement) -> str:
    return (
        f"measured: {what} (membench device calibrate on {m.gpu}, torch {m.torch_version}, "
        f"driver {m.driver or 'unknown'}, {m.when})"
    )


def _entry(key: str, value, source: str) -> str:
    shown = f'"{value}"' if isinstance(value, int) and not isinstance(value, bool) else value
    source = source.replace('"', "'")
    return f'{key} = {{ value = {shown}, assumed = false, source = "{source}" }}'


def profile_text(name: str, m: CardMeasurement) -> str:
    """The device profile file (TOML) of a measurement: every figure measured, with the
    command and the software it was measured with (device_profiles reads it back)."""
    shapes = len({c.shape for c in m.convs})
    lines = [
        f'description = "device profile: {m.gpu}, calibrated {m.when}; combine after a grid '
        'profile (docs/device-total.md)"',
        f'gpu = "{m.gpu}"',
        "",
        "# Written by `membench device calibrate`: every figure measured on this card.",
        "[card]",
        f'compute_capability = "{m.compute_capability[0]}.{m.compute_capability[1]}"',
        _entry("memory", m.memory, _measured("torch.cuda.mem_get_info() total", m)),
        _entry(
            "usable",
            m.usable,
            _measured("mem_get_info() free after CUDA initialised + this process's context", m),
        ),
        _entry(
            "context",
            m.context,
            _measured("NVML process memory - memory_reserved() after a training step", m),
        ),
    ]
    if m.context_eager is not None:
        lines.append(
            _entry(
                "context_eager",
                m.context_eager,
                _measured("the same with CUDA_MODULE_LOADING=EAGER, in a child process", m),
            )
        )
    else:
        lines.append(
            f'context_eager = {{ value = "{m.context}", assumed = true, source = "the lazy '
            'figure: the eager child process could not be measured" }'
        )
    lines.append(
        _entry(
            "cublas_workspace",
            m.cublas_workspace,
            _measured(
                f"torch._C._cuda_getCublasWorkspaceSize(); clearing the step's "
                f"{m.cublas_workspaces} workspace(s) freed {format_size(m.cublas_workspace)} each",
                m,
            ),
        )
    )
    for key, benchmark in (("conv_workspace_off", False), ("conv_workspace_on", True)):
        ratio = round(m.conv_ratio(benchmark), 4)
        what = (
            f"largest workspace / lowered matrix over {shapes} conv shapes x 3 passes, "
            f"cudnn.benchmark {'on' if benchmark else 'off'}"
        )
        lines.append(_entry(key, ratio, _measured(what, m)))
    return "\n".join(lines) + "\n"


# -- on a GPU -----------------------------------------------------------------------------------
def _context_now(index: int) -> int | None:
    import torch

    from ..measure.devices import nvml_process_bytes

    process = nvml_process_bytes(index)
    return None if process is None else process - torch.cuda.memory_reserved(index)


def _training_step(index: int) -> None:
    """A small training step: a conv, a linear head, AdamW, backward (GEMMs in both passes)."""
    import torch

    device = torch.device("cuda", index)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 10),
    ).to(device)
    optimizer = torch.optim.AdamW(model.parameters())
    images = torch.randn(8, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (8,), device=device)
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(index)


def _conv_workspaces(index: int, benchmark: bool) -> list[ConvWorkspace]:
    """Every pass of every convolution of ``CONV_SHAPES`` with cudnn.benchmark as given."""
    import torch

    before_mode = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = benchmark
    try:
        found = []
        for shape in CONV_SHAPES:
            found += _shape_workspaces(index, shape, benchmark)
            torch.cuda.empty_cache()  # the shape's tensors are gone; start the next one clean
        return found
    finally:
        torch.backends.cudnn.benchmark = before_mode


def _conv_pass(kind: str, grad, x, weight, args: tuple) -> tuple:
    """One pass of a convolution through ATen, as autograd calls it; its outputs."""
    import torch

    if kind == "forward":
        return (torch.ops.aten.convolution(x, weight, None, *args),)
    mask = [kind == "backward_data", kind == "backward_weight", False]
    grad_input, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad, x, weight, None, *args, mask
    )
    return (grad_input,) if kind == "backward_data" else (grad_weight,)


def _shape_workspaces(index: int, shape: tuple, benchmark: bool) -> list[ConvWorkspace]:
    import torch

    from .workspace import ConvCall, lowered_bytes

    batch, c_in, c_out, size, kernel, stride = shape
    device = torch.device("cuda", index)
    x = torch.randn(batch, c_in, size, size, device=device)
    weight = torch.randn(c_out, c_in, kernel, kernel, device=device)
    args = ([stride] * 2, [kernel // 2] * 2, [1, 1], False, [0, 0], 1)
    y = torch.ops.aten.convolution(x, weight, None, *args)
    grad = torch.randn_like(y)
    found = []
    for kind in ("forward", "backward_data", "backward_weight"):
        _conv_pass(kind, grad, x, weight, args)  # the first call searches or picks its plan
        torch.cuda.synchronize(index)
        before = torch.cuda.memory_allocated(index)
        torch.cuda.reset_peak_memory_stats(index)
        outputs = _conv_pass(kind, grad, x, weight, args)
        torch.cuda.synchronize(index)
        peak = torch.cuda.max_memory_allocated(index)
        kept = sum(_rounded(t.untyped_storage().nbytes()) for t in outputs)
        call = ConvCall(kind, tuple(x.shape), tuple(y.shape), (kernel, kernel), x.element_size())
        found.append(
            ConvWorkspace(shape, kind, benchmark, peak - before - kept, lowered_bytes(call))
        )
    return found


def _rounded(nbytes: int) -> int:
    from ..measure.memtrack import cuda_allocated_size

    return cuda_allocated_size(nbytes)


def _eager_context(index: int) -> int | None:
    """The context after a training step in a child process with CUDA_MODULE_LOADING=EAGER."""
    code = (
        "import sys, json; from membench.planning.card_calibration import child_context; "
        f"print(json.dumps(child_context({index})))"
    )
    environ = {**os.environ, "CUDA_MODULE_LOADING": "EAGER"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=300
        )
        return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def child_context(index: int) -> int | None:
    """In a child process: the context after a training step (``_eager_context``)."""
    import torch

    torch.cuda.init()
    _training_step(index)
    return _context_now(index)


def measure_card(index: int = 0) -> CardMeasurement:
    """Measure card ``index`` (module docstring). This process must not have used CUDA yet."""
    import torch

    from ..measure.devices import nvml_process_bytes

    if torch.cuda.is_initialized():
        raise RuntimeError("calibrate in a fresh process: CUDA is initialised already")
    torch.cuda.init()
    free, total = torch.cuda.mem_get_info(index)
    bare = nvml_process_bytes(index) or 0
    _training_step(index)
    context = _context_now(index)
    before = torch.cuda.memory_allocated(index)
    torch._C._cuda_clearCublasWorkspaces()
    freed = before - torch.cuda.memory_allocated(index)
    per_workspace = torch._C._cuda_getCublasWorkspaceSize()
    props = torch.cuda.get_device_properties(index)
    convs = _conv_workspaces(index, False) + _conv_workspaces(index, True)
    return CardMeasurement(
        gpu=torch.cuda.get_device_name(index),
        compute_capability=(props.major, props.minor),
        memory=total,
        usable=free + bare,
        context=context if context is not None else bare,
        context_eager=_eager_context(index),
        cublas_workspace=per_workspace,
        cublas_workspaces=freed // per_workspace if per_workspace else 0,
        convs=convs,
        torch_version=torch.__version__,
        driver=_driver_version(),
        when=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
    )


def _driver_version() -> str:
    from ..measure.devices import nvml

    try:
        with nvml() as pynvml:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # NVML missing: the profile says unknown
        return ""


def measurement_json(m: CardMeasurement) -> str:
    """The measurement as JSON (every conv pass too), written beside the profile."""
    return json.dumps(asdict(m), indent=2)


def check_profile_name(name: str) -> None:
    """DeviceProfileError (one line) for a name a profile file cannot have: checked before a
    card is measured, not after."""
    if slug(name) != name:
        raise DeviceProfileError(f"a device profile name takes a-z, 0-9 and '-', got {name!r}")


def write_device_profile(name: str, m: CardMeasurement, folder: Path) -> Path:
    """Write ``folder/NAME.toml`` (the device profile, ``--profile NAME`` finds it in
    ./profiles) and ``NAME.json`` (the whole measurement) after checking the profile reads back
    (DeviceProfileError otherwise, nothing written)."""
    check_profile_name(name)
    text = profile_text(name, m)
    parse_device_table(name, m.gpu, tomllib.loads(text)["card"])
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / f"{name}.json", measurement_json(m))
    path = folder / f"{name}.toml"
    write_text(path, text)
    return path


__all__ = [
    "CONV_SHAPES",
    "CardMeasurement",
    "ConvWorkspace",
    "check_profile_name",
    "child_context",
    "measure_card",
    "measurement_json",
    "profile_text",
    "write_device_profile",
]

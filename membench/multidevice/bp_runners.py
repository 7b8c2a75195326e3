"""Backprop across devices, on torch's own APIs: ``bp-ddp``, ``bp-fsdp`` and ``bp-pp``.

Each is the ``bp`` model and recipe (``membench.runners.bp``: same weights for a seed, same loss,
same AdamW), spread over the cell's ranks (docs/multi-device.md, "The methods"):

- ``bp-ddp``: ``DistributedDataParallel`` (gradients as bucket views), each rank a 1/N share of
  the batch; the gradients are averaged across ranks in the backward pass;
- ``bp-fsdp``: FSDP2, ``fully_shard`` on every conv block and on the whole model, each rank a
  1/N share of the batch; parameters, gradients and AdamW's moments are sharded;
- ``bp-pp``: ``torch.distributed.pipelining``, stage s the contiguous layers of
  ``pipeline_stages`` (the head on the last), micro-batches of ``--micro-batch`` under
  ``--schedule gpipe`` or ``1f1b``; the gradients are the mean over micro-batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..archs import conv_stack_spec
from ..runners.base import AUTOCAST_DTYPES, RunnerConfigError
from ..runners.bp import BPRunner
from ..runners.optim import WholeModelAdamW
from .spanning import (
    PIPELINE,
    SPANS_DEVICES,
    BusyClock,
    Pipeline,
    SpansDevices,
    data_parallel_check,
    estimating,
    group_view,
    pipeline_stages,
    rank_part,
)


class _DataParallel(SpansDevices, BPRunner):
    """The batch split across ranks: each holds and trains on its own 1/N share."""

    @classmethod
    def check_devices(cls, cell) -> None:
        data_parallel_check(cls.name, cell)

    def local_batch(self, images, labels):
        rank, world = group_view(self)
        return rank_part(images, rank, world), rank_part(labels, rank, world)

    def _new_update(self) -> None:
        self.update = WholeModelAdamW(self.model.parameters(), self.total_steps)
        self.optimizer, self.schedule = self.update.optimizer, self.update.schedule


def _completed_allreduce(state, bucket):
    """An estimate's DDP communication hook: the default hook's in-place average, whose result
    the fake process group cannot hand back, returned as a completed future."""
    buffer = bucket.buffer()
    buffer.div_(torch.distributed.get_world_size())
    torch.distributed.all_reduce(buffer)
    future = torch.futures.Future()
    future.set_result(buffer)
    return future


class _FirstBucketOrder:
    """An estimate's view of DDP's reducer that never rebuilds its buckets (see BPDDPRunner)."""

    def __init__(self, reducer):
        self._reducer = reducer

    def _rebuild_buckets(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self._reducer, name)


class BPDDPRunner(_DataParallel):
    """``bp`` under DistributedDataParallel."""

    name = "bp-ddp"
    summary = "bp on N devices: DistributedDataParallel, the batch split across ranks"
    contract = BPRunner.contract.but(**SPANS_DEVICES, same_gradients_as="bp")

    def __init__(self, cell, device="cpu", **options):
        super().__init__(cell, device, **options)
        group_view(self)
        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        # An estimate's fake group moves no data: DDP cannot check parameter shapes at init, its
        # all-reduce hands back nothing, and it cannot agree on a new bucket order after the
        # first step (a broadcast it reads back): an estimate keeps the first order, whose
        # buckets hold the same gradient bytes (docs/multi-device.md, "The methods").
        fake = estimating()
        self.ddp = DistributedDataParallel(
            self.model, device_ids=ids, gradient_as_bucket_view=True, init_sync=not fake
        )
        if fake:
            self.ddp.register_comm_hook(None, _completed_allreduce)
            self.ddp.reducer = _FirstBucketOrder(self.ddp.reducer)
        self.forward = self.ddp


class BPFSDPRunner(_DataParallel):
    """``bp`` under FSDP2: every conv block, and the whole model, ``fully_shard``-ed."""

    name = "bp-fsdp"
    summary = "bp on N devices: FSDP2 fully_shard per conv block, the batch split across ranks"
    contract = BPRunner.contract.but(**SPANS_DEVICES, layer_stack=True, same_gradients_as="bp")

    def __init__(self, cell, device="cpu", **options):
        from torch._subclasses.fake_tensor import unset_fake_temporarily
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        super().__init__(cell, device, **options)
        _, world = group_view(self)
        with unset_fake_temporarily():  # a mesh holds real tensors, also in an estimate
            mesh = init_device_mesh(self.device.type, (world,))
        for block in self.model.backbone.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(self.model, mesh=mesh)
        self._new_update()  # over the sharded parameters


class PipelineStageModule(nn.Module):
    """Stage s of the ``bp`` model: its contiguous conv layers (block and propagation path), the
    global average pool and head on the last stage. Under autocast the stage's output is held
    in the autocast dtype, as the next stage's conv casts it first thing (no value changes)."""

    def __init__(self, model: nn.Module, layers: range, runner: BPRunner):
        super().__init__()
        self.layers = [model.backbone.layer(i) for i in layers]
        self.blocks = nn.ModuleList(layer.block for layer in self.layers)
        self.head = model.head if layers.stop == len(model.backbone) else None
        self.runner = runner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.runner.autocast():
            for layer in self.layers:
                x = layer(x)
            if self.head is not None:
                return self.head(x.mean(dim=(2, 3)))
        dtype = AUTOCAST_DTYPES[self.runner.precision]
        # Sent as it is: contiguous (a no-op unless channels_last), in the autocast dtype.
        return (x if dtype is None else x.to(dtype)).contiguous()


def _timed_stage(clock: BusyClock):
    """A ``PipelineStage`` whose every micro-batch's forward and backward run on ``clock``."""
    from torch.distributed.pipelining import PipelineStage

    class TimedStage(PipelineStage):
        def forward_one_chunk(self, *args, **kwargs):
            with clock.busy():
                return super().forward_one_chunk(*args, **kwargs)

        def backward_one_chunk(self, *args, **kwargs):
            with clock.busy():
                return super().backward_one_chunk(*args, **kwargs)

    return TimedStage


class BPPipelineRunner(Pipeline, BPRunner):
    """``bp`` as a pipeline of contiguous layers, one stage per rank."""

    name = "bp-pp"
    summary = (
        "bp on N devices: torch.distributed.pipelining, a stage of contiguous layers per "
        "rank, --micro-batch M, --schedule gpipe or 1f1b"
    )
    contract = BPRunner.contract.but(
        **PIPELINE, pipeline_schedule=True, default_schedule="1f1b", same_gradients_as="bp"
    )

    @classmethod
    def check_devices(cls, cell) -> None:
        super().check_devices(cell)
        chunks = cell.batch // (cell.micro_batch or cell.batch)
        if cell.schedule == "1f1b" and chunks < cell.devices:
            raise RunnerConfigError(
                f"{cls.name} --schedule 1f1b needs at least as many "
                f"micro-batches as stages: {chunks} < {cell.devices}; lower "
                "--micro-batch"
            )

    def __init__(self, cell, device="cpu", **options):
        from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe

        super().__init__(cell, device, **options)
        self.rank, world = group_view(self)
        self.stages = pipeline_stages(self.arch, self.res, world)
        self.model = PipelineStageModule(self.model, self.stages[self.rank], self)
        self.forward = self.model
        self.update = WholeModelAdamW(self.model.parameters(), self.total_steps)
        self.clock = BusyClock(self.device)
        self.pipeline: object = None  # built at the first step, when the batch is known
        self.batch = 0
        self.schedule_class = ScheduleGPipe if self.cell.schedule == "gpipe" else Schedule1F1B

    def local_batch(self, images, labels):
        """The first stage holds the images, the last the labels, the others neither; every
        stage learns the batch size (its number of micro-batches)."""
        self.batch = images.shape[0]
        return (
            images if self.rank == 0 else None,
            labels if self.rank == len(self.stages) - 1 else None,
        )

    def _example(self, layer: int, requires_grad: bool) -> torch.Tensor:
        """Layer ``layer``'s input for one micro-batch, as metadata (``PipelineStage``'s static
        shapes: no stage needs to ask its neighbour); past the last layer, the logits."""
        spec, dtype = conv_stack_spec(self.arch), AUTOCAST_DTYPES[self.precision]
        if layer == spec.depth:
            shape = (self.micro_batch, self.classes)
        elif layer == 0:
            shape, dtype = (self.micro_batch, spec.in_channels, self.res, self.res), None
        else:
            size = spec.spatial_sizes(self.res)[layer]
            shape = (self.micro_batch, spec.channels[layer - 1], size, size)
        return torch.empty(
            shape, device="meta", dtype=dtype or torch.float32, requires_grad=requires_grad
        )

    def _build_pipeline(self):
        stage = self.stages[self.rank]
        pipeline_stage = _timed_stage(self.clock)(
            self.model,
            self.rank,
            len(self.stages),
            self.device,
            input_args=self._example(stage.start, self.rank > 0),
            output_args=self._example(stage.stop, True),
        )
        self.stage = pipeline_stage
        return self.schedule_class(
            pipeline_stage, n_microbatches=self.batch // self.micro_batch, loss_fn=self._loss
        )

    def held_tensors(self) -> list[torch.Tensor]:
        """The stage's receive buffers (activations in, gradients back), one per micro-batch:
        made in the first step and kept for every later one."""
        stage = getattr(self, "stage", None)
        if stage is None:
            return []
        infos = [*stage.args_recv_info.values(), *stage.grad_recv_info.values()]
        return [getattr(info, "buffer", None) for group in infos for info in group]

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return F.cross_entropy(logits, labels)

    def step(self, images, labels):
        """One step of the pipeline schedule over the batch's micro-batches, then AdamW."""
        if self.pipeline is None:
            self.pipeline = self._build_pipeline()
        self.update.zero_grad()
        losses: list[torch.Tensor] = []
        if self.rank == 0:
            self.pipeline.step(images)
        elif self.rank == len(self.stages) - 1:
            self.pipeline.step(target=labels, losses=losses)
        else:
            self.pipeline.step()
        self.update.step(self.scaler)
        self.update.schedule_step()
        if losses:
            return torch.stack([loss.detach() for loss in losses]).mean()
        return torch.zeros((), device=self.device)

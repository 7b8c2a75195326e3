"""DTG-FF across devices: ``ff-pp``, a forward-only pipeline of layer-local training.

Each rank owns the contiguous layers of ``pipeline_stages`` (the split ``bp-pp`` uses) and
trains them exactly as ``ff-pipelined --micro-batch M`` trains every layer (docs/multi-device.md,
"The methods"): chunk by chunk, each of its layers runs forward, local loss
(x M/B) and backward on the chunk, the gradient accumulating, and propagates the chunk to the
next layer (``FFPipelinedRunner.train_chunk``, the pre-step weights'); the chunk's output goes
to the next rank. No gradient ever crosses a rank: chunks flow forward only. After its last chunk
each layer takes its one clip and step of the batch. The classifier features (GAP of every layer
but the first) of each rank go to the last rank, whose classifier steps once per batch.

The update is ``ff-pipelined --micro-batch M``'s: layer l+1's input is layer l's output under
the pre-step weights in both, and each layer's gradient is the sum over the same chunks. Only
the order of the chunks' work differs (chunk-major here, layer-major there), so with dropout on
the masks are drawn in another order; ``membench verify`` compares with dropout off.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..runners.base import AUTOCAST_DTYPES
from ..runners.ff import Boundary, FFPipelinedRunner
from .spanning import PIPELINE, BusyClock, Pipeline, group_view, pipeline_stages


class FFPipelineRunner(Pipeline, FFPipelinedRunner):
    """DTG-FF with a contiguous group of layers per rank and chunks flowing forward only."""

    name = "ff-pp"
    summary = (
        "DTG-FF on N devices: contiguous layers per rank, chunks of --micro-batch flowing "
        "forward only, each layer's step after its chunks"
    )
    contract = FFPipelinedRunner.contract.but(
        **PIPELINE, same_layer_gradients_as="ff-pipelined", same_first_step_losses_as=None
    )

    def __init__(self, cell, device="cpu", **options):
        super().__init__(cell, device, **options)
        self.rank, world = group_view(self)
        self.owned = pipeline_stages(self.arch, self.res, world)[self.rank]
        self.is_last_rank = self.rank == world - 1
        self._drop_others()
        self.clock = BusyClock(self.device)
        self.batch = 0

    def _drop_others(self) -> None:
        """Keep only this rank's layers (their weights were drawn with every layer's, so a seed
        gives ``ff-pipelined``'s), and the classifier on the last rank."""
        model = self.model
        for layer in range(self.depth):
            if layer not in self.owned:
                model.backbone.blocks[layer] = nn.Identity()
                model.readouts[layer] = nn.Identity()
                self.layer_params[layer] = []
        keep = [layer in self.owned for layer in range(self.depth)]
        self.layer_optimizers = tuple(o if k else None for o, k in zip(self.layer_optimizers, keep))
        self.layer_schedules = tuple(s if k else None for s, k in zip(self.layer_schedules, keep))
        if not self.is_last_rank:
            model.classifier = nn.Identity()
            self.classifier_optimizer = self.classifier_schedule = None

    def optimizers(self):
        own = [o for o in self.layer_optimizers if o is not None]
        return own + ([self.classifier_optimizer] if self.is_last_rank else [])

    def local_batch(self, images, labels):
        """The first rank holds the images; every rank the labels (every layer's loss needs
        them)."""
        self.batch = images.shape[0]
        return (images if self.rank == 0 else None), labels

    def _chunk_shape(self, rows: int) -> tuple[int, ...]:
        spec, first = self.model.backbone.spec, self.owned.start
        size = spec.spatial_sizes(self.res)[first]
        return (rows, spec.channels[first - 1], size, size)

    def _receive(self, rows: int):
        """Post the receive of the next chunk from the previous rank: (buffer, work)."""
        dtype = AUTOCAST_DTYPES[self.precision] or torch.float32
        buffer = torch.empty(self._chunk_shape(rows), dtype=dtype, device=self.device)
        return buffer, dist.irecv(buffer, src=self.rank - 1)

    def _through_layers(self, x: torch.Tensor, y: torch.Tensor, features: list) -> torch.Tensor:
        """One chunk through this rank's layers: each layer's forward, local loss (its share of
        the batch), backward and propagation; its output (the next rank's input)."""
        for index in self.owned:
            layer = self.model.backbone.layer(index)
            boundary = Boundary(self, layer, batch=x.shape[0])  # the chunk's own, no copy
            share = self.loss_share(x.shape[0], self.batch)
            self.chunk_losses[index].append(self.train_chunk(layer, x, y, share, boundary, 0))
            if boundary.feature is not None:
                features[index].append(boundary.feature)
            x = x if boundary.next_input is None else boundary.next_input
        return x.contiguous()  # sent as it is (a no-op unless channels_last)

    def _chunks(self, images, labels) -> dict[int, list]:
        """Every chunk of the batch through this rank's layers; the features they left. One
        chunk is received ahead and one sent behind, so a rank holds a few chunks at a time."""
        features = {index: [] for index in self.owned}
        sending = ahead = None
        for start in range(0, self.batch, self.micro_batch):
            rows = min(self.micro_batch, self.batch - start)
            if self.rank == 0:
                x = images[start : start + rows]
            else:
                x, work = ahead if ahead is not None else self._receive(rows)
                work.wait()
                following = start + rows
                ahead = (
                    self._receive(min(self.micro_batch, self.batch - following))
                    if following < self.batch
                    else None
                )
            with self.clock.busy():
                out = self._through_layers(x, labels[start : start + rows], features)
            # The received chunk (or the slice of the images) is spent: drop it before the next
            # receive is posted, so a rank holds one input chunk at a time.
            del x
            if sending is not None:
                sending[1].wait()  # the chunk before has left: its output can go
            sending = None if self.is_last_rank else (out, dist.isend(out, dst=self.rank + 1))
            # Only the pending send may keep the output now (the last rank keeps none): it goes
            # once the send completes, one chunk later.
            del out
        if sending is not None:
            sending[1].wait()
        return features

    def _gather_features(self, features: dict[int, list]) -> torch.Tensor | None:
        """The classifier's input on the last rank: every rank's features, in layer order; the
        other ranks send theirs and get None."""
        own = [torch.cat(parts) for index, parts in features.items() if parts]
        if not self.is_last_rank:
            if own:
                dist.send(torch.cat(own, dim=1).contiguous(), dst=len(self._all_stages()) - 1)
            return None
        gathered = []
        for rank, stage in enumerate(self._all_stages()[:-1]):
            width = sum(self.model.backbone.spec.channels[i] for i in stage if i >= 1)
            if width:
                part = torch.empty(self.batch, width, dtype=own[0].dtype, device=self.device)
                dist.recv(part, src=rank)
                gathered.append(part)
        return torch.cat(gathered + own, dim=1)

    def _all_stages(self) -> list[range]:
        return pipeline_stages(self.arch, self.res, dist.get_world_size())

    def step(self, images, labels):
        """One ``ff-pp`` step (the module docstring): chunks forward, then each layer's step,
        then the classifier's on the last rank."""
        for index in self.owned:
            self.layer_optimizers[index].zero_grad(set_to_none=True)
        self.chunk_losses = {index: [] for index in self.owned}
        features = self._chunks(images, labels)
        with self.clock.busy():
            for index in self.owned:
                self._clip_and_step(index)
        self.layer_losses = [torch.stack(self.chunk_losses[index]).sum() for index in self.owned]
        total = torch.stack(self.layer_losses).sum()
        classifier_input = self._gather_features(features)
        if classifier_input is not None:
            with self.clock.busy():
                total = total + self._classifier_step(classifier_input, labels)
        self.scaler.update()
        return total

"""Cells on several devices (``--devices N``; docs/multi-device.md).

- ``spanning``: what the runners that span devices share (refusals, the group, the split, the
  busy clock); ``bp_runners`` (``bp-ddp``, ``bp-fsdp``, ``bp-pp``) and ``ff_runner`` (``ff-pp``);
- ``split``: the pipeline split (no torch), shared by the runners and the schedule model;
- ``launch``: N ranks of ``torch.distributed`` for one measured cell;
- ``rank_device``: one rank under the measurement protocol;
- ``fake_group``: every rank's estimate in a fake process group;
- ``schedule_model``: a pipeline's step and bubble from one device's per-layer costs;
- ``rows``: a cell's row from its ranks, and ``ranks.csv``.
"""

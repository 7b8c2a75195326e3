"""Predicting and planning without a GPU: what a cell would need on a device it does not run on.

- ``estimate``: a cell under the measurement protocol on fake tensors (``estimate_cell``,
  ``EstimateDevice``), with CUDA's dispatch-level differences modelled;
- ``fit``: the largest batch under a device budget (``fit_batch``);
- ``plan``: every family's tooling for one cell, estimated and ranked by a throughput bound;
- ``layer_costs``: one device's per-layer costs, the schedule model's input;
- ``cuda_autocast``, ``cuda_attention``: CUDA's autocast policies and attention kernel choice,
  modelled at the dispatcher for a CUDA estimate on the CPU's fake tensors.

docs/estimate.md is the reference.
"""

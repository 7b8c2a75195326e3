"""How one cell is measured (docs/measurement.md).

- ``protocol``: ``run_cell``, the one path every measurement takes (a sweep's worker, ``membench
  run``, the pytest fixture, the CPU memory gate, an estimate, each rank), and what it builds;
- ``devices``: the ``Device`` interface the protocol asks (a session, timing, where the peak
  comes from, a budget, a timeline) and the real devices, ``CpuDevice`` and ``CudaDevice``; the
  devices an estimate plans for are ``membench.planning.estimate``'s, a rank's
  ``membench.multidevice.rank_device``'s;
- ``memtrack``: the tensor tracker, the CPU's and the estimate's source of peak memory;
- ``flops``: a step's FLOPs and the peak MFU is held against; ``peaks``: the GPUs' datasheet
  peaks; ``calibrate``: the CPU's measured peak.
"""

"""Memory over one training step (docs/timeline.md).

- ``events``: the ``Timeline`` of one step, its ``timeline.csv`` rows and where it peaks (no torch);
- ``phases``: the phase of each event and the tracker's recorder (torch);
- ``snapshot``: PyTorch memory snapshots synthesized from a timeline, and a CUDA allocator
  history read into one (no torch);
- ``files``: a results folder's ``timeline.csv`` and snapshot pickles;
- ``viewer``: PyTorch's memory viewer opened on a snapshot without a network (no torch until
  a page is written);
- ``figure``: the report's figure of memory over a step.
"""

"""Where cells run (docs/sweeps.md).

- ``sweep``: the sweep loop (``sweep(config, out_dir)``): lock the folder, skip what is done,
  run the rest through an executor, append each row as it finishes;
- ``worker``: where a cell runs, in process or in a forkserver worker, so that crashes and hangs
  become rows; ``children``: what every forkserver child (a worker, a rank) does first;
- ``local``: the ``Executor`` interface and the executor of this machine; ``ray_cluster``: one
  Ray task per cell (docs/scale-out.md).

Only the sweep process writes results.
"""

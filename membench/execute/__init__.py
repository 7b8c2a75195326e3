"""Where cells run: the sweep loop (``sweep``), the isolated worker process (``worker``), and
the executors that drive workers on this machine (``local``) or on a Ray cluster
(``ray_cluster``). Only the sweep process writes results (docs/sweeps.md).
"""

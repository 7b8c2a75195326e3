"""How one cell is measured: the protocol, the device interface, the tensor tracker, FLOPs and
peaks, and estimates on fake tensors (docs/measurement.md, "Measurement protocol").

``protocol.run_cell`` is the one path every measurement takes; ``devices`` holds everything
device-specific, ``estimate.EstimateDevice`` the devices an estimate plans for.
"""

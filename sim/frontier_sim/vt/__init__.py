"""The virtual-time cluster: simulated engines and the picker's own scheduling on one model clock.

The only part of the simulator that imports the picker (an import contract in `make lint` checks it): the
engine and its HTTP server stay usable, and testable, without it.
"""

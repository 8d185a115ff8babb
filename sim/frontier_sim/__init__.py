"""Frontier's simulated vLLM: a calibrated engine core, a vLLM-compatible HTTP server around it, and a fleet
launcher that runs many of them in one process.

The engine core (`engine`, `timing`, `tokenizer`) is pure and clock-agnostic so that a real-time server and a
virtual-time cluster simulator drive the same model of a GPU serving engine.
"""

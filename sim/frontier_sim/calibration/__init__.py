"""Measured GPU step times (package data): `h100_llama8b.json`, `h200_llama8b.json`.

Copies of the project's own measurements in `shared/calibration/` (`gpu_profile.py` on one GPU, a
Llama-3.1-8B-shaped decoder in bf16); `frontier_sim.timing` loads and scales them.
"""

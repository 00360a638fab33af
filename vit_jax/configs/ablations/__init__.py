"""Ablation studies for `python -m vit_jax.ablate --config=configs/ablations/NAME.py`."""

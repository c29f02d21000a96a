"""Hydra discovers dr_exp's launcher here; the engine lives in the ``dr_exp`` package."""

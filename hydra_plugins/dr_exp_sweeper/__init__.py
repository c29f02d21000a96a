"""Hydra discovers dr_exp's sweeper here; the validation lives in ``dr_exp.sweeper``."""

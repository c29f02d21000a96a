"""dr_exp: a durable SQLite job queue behind a Hydra launcher."""

__version__ = "0.1.0"

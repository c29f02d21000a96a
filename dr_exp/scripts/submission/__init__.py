"""Batch submission helpers: ``from dr_exp.scripts.submission.submission_utils import JobSubmitter``."""

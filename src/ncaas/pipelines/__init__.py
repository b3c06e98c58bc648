"""Chains of analyses: a ``pipeline.yaml`` of named steps run per dataset, each step as a job."""

from .spec import Pipeline, check_pipeline, parse_pipeline

__all__ = ["Pipeline", "check_pipeline", "parse_pipeline"]

"""Reviewing an analysis' neurons (docs/review.md): the layout read, decisions kept, the curation job."""

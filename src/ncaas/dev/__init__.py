"""The analysis developer's workflow: scaffold, run as production does, publish (``ncaas dev``)."""

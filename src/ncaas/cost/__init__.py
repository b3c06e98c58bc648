"""Cost: pricing profiles, every task and job priced, estimates, budgets, and the TCO comparison.

- :mod:`.profile` — the pricing profile (YAML; Standard and Save rates; node types)
- :mod:`.pricing` — measured usage x rates -> a task's cost and its breakdown
- :mod:`.estimate` — time and cost against input size, from past runs
- :mod:`.budgets` — per-group budgets per period; admission and the hard cap
- :mod:`.report` — spend per group, analysis, user and period
- :mod:`.tco` — EAC, LCC, LUC and the crossover figure
"""

from .profile import OPTIONS, PricingError, PricingProfile, load_profile

__all__ = ["OPTIONS", "PricingError", "PricingProfile", "load_profile"]

"""Total cost of ownership: this platform against buying a local machine (NeuroCAAS' EAC, LCC, LUC).

References
----------
Abe, T. et al. "Neuroscience Cloud Analysis As a Service", Neuron 110 (2022): the equivalent
annual cost of a local machine, and the local cost and utilization crossovers.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any

from ..exceptions import NcaasError

__all__ = ["SECONDS_PER_WEEK", "Crossover", "LocalMachine", "crossover", "eac", "figure_png"]

SECONDS_PER_WEEK = 604_800
WEEKS_PER_YEAR = 52


@dataclass(frozen=True)
class LocalMachine:
    """A local machine: price tag (currency units), lifetime (years), annuity rate, yearly support cost."""

    price: float
    lifetime: float
    rate: float
    support: float = 0.0

    def __post_init__(self) -> None:
        if self.price < 0 or self.support < 0:
            raise NcaasError("the machine's price and support cost must be >= 0")
        if self.lifetime <= 0:
            raise NcaasError(f"lifetime {self.lifetime} must be > 0 years (2 is realistic, 4 optimistic)")
        if self.rate < 0:
            raise NcaasError(f"annuity rate {self.rate} must be >= 0, e.g. 0.05 for 5 %")


def eac(machine: LocalMachine) -> float:
    """Equivalent annual cost: ``x / ((1 - (1 + r)^-n) / r) + c_s(n)`` (``x / n + c_s`` when r = 0)."""
    n, r = machine.lifetime, machine.rate
    annuity = n if r == 0 else (1 - (1 + r) ** (-n)) / r
    return machine.price / annuity + machine.support


@dataclass(frozen=True)
class Crossover:
    option: str  # which platform price: standard or save
    cost_per_dataset: float  # x_p
    local_seconds: float  # t_local
    eac: float
    lcc: float  # datasets per week above which the local machine is cheaper
    luc: float  # % of every week the local machine must work on this analysis to reach the LCC
    lifetime: float

    @property
    def pays_off(self) -> bool:
        return self.luc <= 100

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "pays_off": self.pays_off}


def crossover(machine: LocalMachine, *, cost_per_dataset: float, local_seconds: float, option: str) -> Crossover:
    """EAC, ``LCC = EAC / (52 x_p)`` and ``LUC = LCC t_local 100 / 604800``."""
    if cost_per_dataset <= 0:
        raise NcaasError(f"the platform's cost per dataset ({option}) must be > 0 to compare, not {cost_per_dataset}")
    if local_seconds <= 0:
        raise NcaasError("the local analysis time per dataset (--local-seconds) must be > 0")
    annual = eac(machine)
    lcc = annual / (WEEKS_PER_YEAR * cost_per_dataset)
    luc = lcc * local_seconds * 100 / SECONDS_PER_WEEK
    return Crossover(option, cost_per_dataset, local_seconds, annual, lcc, luc, machine.lifetime)


def figure_png(rows: list[Crossover], *, currency: str = "USD", title: str = "") -> bytes:
    """Cost per week against datasets per week: the local machine's flat EAC/52 (one line per
    lifetime), the platform's rising lines, the crossovers (LCC, with LUC) and where the local
    machine's capacity ends."""
    from matplotlib.figure import Figure  # no pyplot: no backend or global state is touched

    capacity = SECONDS_PER_WEEK / rows[0].local_seconds
    top = max(max(r.lcc for r in rows), capacity) * 1.3
    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    seen_lifetimes: set[float] = set()
    for r in rows:
        if r.lifetime not in seen_lifetimes:
            seen_lifetimes.add(r.lifetime)
            ax.axhline(r.eac / WEEKS_PER_YEAR, color="0.3", lw=1.5, ls="-" if len(seen_lifetimes) == 1 else "--")
            ax.annotate(
                f"local machine, {r.lifetime:g}-year lifetime",
                (top * 0.02, r.eac / WEEKS_PER_YEAR),
                textcoords="offset points",
                xytext=(0, 4),
                fontsize=8,
            )
    seen_options: dict[str, float] = {}
    for i, r in enumerate(rows):
        if r.option not in seen_options:
            seen_options[r.option] = r.cost_per_dataset
            ax.plot([0, top], [0, top * r.cost_per_dataset], lw=1.5, label=f"ncaas {r.option}")
        ax.plot([r.lcc], [r.eac / WEEKS_PER_YEAR], "o", color="black", ms=4)
        ax.annotate(
            f"LCC {r.lcc:.1f}/wk, LUC {r.luc:.1f} %",
            (r.lcc, r.eac / WEEKS_PER_YEAR),
            textcoords="offset points",
            xytext=(5, -12 if i % 2 == 0 else 5),  # neighbours alternate below and above the line
            fontsize=8,
        )
    ax.axvline(capacity, color="red", lw=1, ls=":", label=f"local capacity ({capacity:.0f} datasets/week)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, max(max(r.eac for r in rows) / WEEKS_PER_YEAR * 2, top * min(seen_options.values()) * 0.5))
    ax.set_xlabel("datasets analysed per week")
    ax.set_ylabel(f"cost per week ({currency})")
    ax.set_title(title or "local machine vs ncaas", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, 0.9))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()

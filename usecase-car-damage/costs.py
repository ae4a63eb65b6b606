"""The repair-cost table: (part, damage, severity) -> parts cost + labour hours x labour rate.

``data/cost_table.csv`` is the single source of truth for prices and for which labels exist: the part, damage
and severity label sets are the values it lists, and only the combinations it lists are physically sensible
(a tyre is not dented; a windshield is not flat). Edit it to your shop's prices; add rows for new parts.

    table = CostTable.load("usecase-car-damage/data/cost_table.csv")   # validated: DataError naming file and row
    table.cost("panel", "dent", "moderate")     # 270.0 = 60 parts + 3.5 h x 60/h
    table.best_combination(p_part, p_damage, p_severity)   # most probable combination the table lists
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data import read_csv
from common.errors import DataError

COLUMNS = ("part", "damage", "severity", "repair", "parts_cost", "labour_hours", "labour_rate")
NO_DAMAGE = "none"  # the damage (and severity) label of an undamaged part


@dataclass(frozen=True)
class CostEntry:
    part: str
    damage: str
    severity: str
    repair: str
    parts_cost: float
    labour_hours: float
    labour_rate: float

    @property
    def total(self) -> float:
        return self.parts_cost + self.labour_hours * self.labour_rate

    def breakdown(self) -> dict:
        """What an adjuster checks: the repair, parts, labour hours x rate, total."""
        return {"repair": self.repair, "parts_cost": self.parts_cost, "labour_hours": self.labour_hours,
                "labour_rate": self.labour_rate, "table_cost": round(self.total, 2)}


class CostTable:
    """The validated cost table; label sets in the order the table first lists them."""

    def __init__(self, entries: list[CostEntry], source: str = "cost table") -> None:
        self.source = source
        self.entries = {(e.part, e.damage, e.severity): e for e in entries}
        self.parts = list(dict.fromkeys(e.part for e in entries))
        self.damages = list(dict.fromkeys(e.damage for e in entries))
        self.severities = list(dict.fromkeys(e.severity for e in entries))

    @classmethod
    def load(cls, path: str | Path) -> CostTable:
        """Read and validate the CSV.

        Raises:
            DataError: missing file or column, an empty cell, a number that does not parse or is negative, a
                zero total, a combination listed twice, or a missing combination (a damaged part without a row
                for every severity, or an undamaged one whose severity is not ``none``) -- naming file and row.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"cost table {path} does not exist (columns: {', '.join(COLUMNS)})")
        header, rows = read_csv(path)
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; expected {', '.join(COLUMNS)}")
        entries, seen = [], {}
        for line, row in rows:
            where = f"{path}, row {line}"
            empty = [c for c in COLUMNS if not (row.get(c) or "").strip()]
            if empty:
                raise DataError(f"{where}: empty cell(s) {empty}")
            numbers = {}
            for c in ("parts_cost", "labour_hours", "labour_rate"):
                try:
                    numbers[c] = float(row[c])
                except ValueError:
                    raise DataError(f"{where}: {c} = {row[c]!r} is not a number") from None
                if not math.isfinite(numbers[c]) or numbers[c] < 0:
                    raise DataError(f"{where}: negative or invalid {c} = {row[c]!r} (costs, hours and rates are "
                                    ">= 0)")
            e = CostEntry(row["part"].strip(), row["damage"].strip(), row["severity"].strip(), row["repair"].strip(),
                          **numbers)
            key = (e.part, e.damage, e.severity)
            if key in seen:
                raise DataError(f"{where}: combination {key} is listed twice (first on row {seen[key]})")
            if e.total <= 0:
                raise DataError(f"{where}: {key} costs nothing (parts_cost + labour_hours x labour_rate = 0); "
                                "every estimate needs a positive cost (e.g. an inspection for 'none')")
            if (e.damage == NO_DAMAGE) != (e.severity == NO_DAMAGE):
                raise DataError(f"{where}: {key}: damage '{NO_DAMAGE}' goes with severity '{NO_DAMAGE}' and only "
                                "with it")
            seen[key] = line
            entries.append(e)
        if not entries:
            raise DataError(f"{path} has no rows")
        table = cls(entries, str(path))
        graded = [s for s in table.severities if s != NO_DAMAGE]
        for part, damage in dict.fromkeys((e.part, e.damage) for e in entries if e.damage != NO_DAMAGE):
            for sev in graded:
                if (part, damage, sev) not in table.entries:
                    raise DataError(f"{path}: missing combination ({part}, {damage}, {sev}): every damaged part "
                                    f"needs a row for each severity {graded}")
        return table

    def cost(self, part: str, damage: str, severity: str) -> float:
        return self.entries[(part, damage, severity)].total

    def combinations(self) -> list[tuple[str, str, str]]:
        return list(self.entries)

    def best_combination(self, p_part: np.ndarray, p_damage: np.ndarray, p_severity: np.ndarray,
                         ) -> tuple[CostEntry, float]:
        """The listed combination with the highest ``p(part) p(damage) p(severity)`` (heads in the table's label
        order) and that probability: the labels always form a combination the table prices."""
        best, best_p = None, -1.0
        for (part, damage, sev), e in self.entries.items():
            p = (p_part[self.parts.index(part)] * p_damage[self.damages.index(damage)]
                 * p_severity[self.severities.index(sev)])
            if p > best_p:
                best, best_p = e, float(p)
        return best, best_p


def noisy_cost(table: CostTable, part: str, damage: str, severity: str, rng: np.random.Generator,
               sigma: float = 0.1) -> float:
    """A ground-truth invoice: the table's cost x log-normal noise (shops, regions and hidden damage differ;
    ``sigma`` 0.1 is about +-10%), clipped at 3 sigma and rounded to cents."""
    factor = math.exp(float(np.clip(rng.normal(0, sigma), -3 * sigma, 3 * sigma)))
    return round(table.cost(part, damage, severity) * factor, 2)

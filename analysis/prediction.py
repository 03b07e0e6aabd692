"""Prediction for a replication: where one new training seed of every variant would place each variant in its own
single-seed Table 1 (`Confidence.table()`'s new_lo, new_hi; drawn by `analysis.seed_level.SeedLevel.draw_new_run`),
and its check by leaving one seed out: the intervals from the other seeds against the held-out seed's own table.

The confidence interval of a place says where the seeds' mean puts a variant; a replication with one new seed moves
every variant by a whole run's deviation (its seed effect and the sampling noise no other run shares), so its places
scatter further: that is the question "would a rerun give the same table?" asks.
"""

from __future__ import annotations

import pandas as pd

from analysis.rank_sets import places
from analysis.ranking import rank_table
from rfsweep.results import REAL


def held_out_places(df: pd.DataFrame, banks: dict, held: int, column: str = "all", b: int = 1000,
                    seed: int = 0) -> pd.DataFrame:
    """The seeds of `df` other than `held` predict the held-out seed's single-seed table: per variant its place there
    (`place`, ties sharing the better place), the prediction interval (`new_lo`, `new_hi`) and whether it holds the
    place (`inside`). Needs two seeds or more besides the held-out one."""
    from analysis.confidence import bootstrap  # deferred: analysis.confidence imports this module's neighbours

    rows = df[df["weights"] != REAL]
    seeds = sorted(set(rows["seed"].astype(int)))
    if held not in seeds:
        raise ValueError(f"held-out seed {held}: not in the sweep (allowed: {', '.join(map(str, seeds))})")
    rest = rows[rows["seed"] != held]
    if rest.groupby("variant")["seed"].nunique().min() < 2:
        raise ValueError(f"held-out seed {held}: the other seeds give some variant fewer than 2 seeds, and one seed "
                         f"measures no seed variance (allowed: 3 seeds or more per variant)")
    conf = bootstrap(rest, {r: banks[r] for r in set(rest["run_dir"])}, b=b, seed=seed)
    table = conf.places(column).set_index("variant")
    own = rank_table(rows[rows["seed"] == held]).set_index("variant")[column].reindex(table.index)
    out = pd.DataFrame({"variant": table.index, "place": places(own.to_numpy()),
                        "new_lo": table["new_lo"].to_numpy(), "new_hi": table["new_hi"].to_numpy()})
    out["inside"] = (out["new_lo"] <= out["place"]) & (out["place"] <= out["new_hi"])
    return out


def leave_one_seed_out(df: pd.DataFrame, banks: dict, column: str = "all", b: int = 1000,
                       seed: int = 0) -> pd.DataFrame:
    """`held_out_places` for every training seed of `df` in turn (a `held` column added)."""
    seeds = sorted(set(df.loc[df["weights"] != REAL, "seed"].astype(int)))
    return pd.concat([held_out_places(df, banks, s, column, b, seed).assign(held=s) for s in seeds],
                     ignore_index=True)

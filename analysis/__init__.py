"""Analysis of saved sweep results: Table 1 ranking, Table 2, Fig. 3. Pure functions, no model, no GPU."""

from analysis.collect import collect, latest_sweep, read_manifest
from analysis.completeness import missing
from analysis.ranking import pareto_ranks, rank_correlation, rank_table, setting_ranks
from analysis.tables import table2, write_table1, write_table2

__all__ = [
    "collect", "latest_sweep", "read_manifest", "missing", "pareto_ranks", "rank_correlation", "rank_table",
    "setting_ranks", "table2", "write_table1", "write_table2",
]

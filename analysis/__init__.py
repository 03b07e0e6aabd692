"""Analysis of saved sweep results: Table 1 ranking, Table 2, Fig. 3. Pure functions, no model, no GPU.

Import what you need from its module (`analysis.collect`, `analysis.completeness`, `analysis.ranking`,
`analysis.tables`, ...): this package imports nothing, so ``python -m analysis --help`` loads no pandas.
"""

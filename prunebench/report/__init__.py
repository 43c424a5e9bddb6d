"""Reporting layer: leaderboards, plots and sweeps, all regenerated from the result store.

- `published`: the published figures per (method, task), with where each comes from.
- `leaderboard`: aggregation over seeds (accuracy loss against dense of the same seed) and writers.
- `plots`: Fig. 1 (accuracy against iterations with 50x/60x/70x markers), Pareto and time plots.
- `sweep`: the cross product of methods x tasks x seeds x grid, run into the store.
"""

"""The benchmark suite: appliance against the tools a user would otherwise pick, same data, same run.

Run it with ``bash bench/run.sh`` (see bench/README.md). Modules: ``data`` (the data sets),
``child`` (one measured operation per fresh process), ``peers`` (restic, borg, zipnn, the careful
user, torch.load), ``suite`` (what runs in which order), ``table`` (the printed table and goals).
"""

"""The analysis: from the runs' ``metrics.json`` to the tables, statistics, verdicts, figures and reports.

``run_results`` reads the runs (the one reader); ``stats`` holds the tests and intervals; ``claims`` the published
claims as data; ``verdicts`` the rule that labels a claim (one small pure module); ``evaluation`` tests every claim on
every dataset; ``tables``, ``figures``, ``report`` and ``html_report`` present the result.

It may import ``repro.config``, ``repro.provenance`` (the training code's versions), ``repro.table_files`` (the table
writer it shares with ``repro.complexity``) and the scientific stack (numpy, pandas, scipy, matplotlib), never torch,
the models or the training code: the aggregate reads numbers, it never runs a network (``tests/test_report.py``
checks every module of this package for torch).
"""

"""`cnnf reproduce`: the paper's robustness figures (section 4, appendix B) as data.

Experiments are declarations (`experiments`), budgets are profiles (`profiles`), and the runner
(`runner`) trains what a figure needs, evaluates it with the library's sweeps, and writes one
small JSON record per figure (`results`), which plots (`figures`) and tables (`tables`) read.
docs/RESULTS.md reports what came out.
"""

"""Running cells: ``preflight`` (every check on user input, before anything loads or is written), ``run_cells``
(plan, resume, failures), ``run_cell`` (one cell's stages: reference, load, compress, held-out fidelity, evaluate,
record), and the process environment they need.

May import: spec, load, backend, records, evalsuite.console, quant, lm-eval.
"""

"""Running cells: ``preflight`` (every check on user input, before anything loads or is written), ``run_cells``
(plan, resume, failures, writing every record), the executors it hands cells to (``executors``: in-process;
``ray_executor``: one Ray task per cell), ``run_cell`` (one cell's stages: reference, load, compress, held-out
fidelity, evaluate, record), and the process environment they need.

May import: spec, load, backend, records, finetune (the LoRA stage), evalsuite.console, quant, lm-eval, ray (only in ray_executor).
"""

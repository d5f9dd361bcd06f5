"""evalsuite: quantize an LLM, evaluate its emergent abilities through lm-eval, compare the results.

The folders follow the data flow of one cell, and dependencies point down this list:

    __main__.py  the CLI: parse, call, print
    run/         preflight -> run_cells -> run_cell: reference, load, compress, held-out fidelity, evaluate, record
    report/      records -> tidy frame -> tables, statistics, plots, files
    spec/        what a cell is (CellSpec, cell id), suites and tasks, quantizer options, sweep files
    load/        model names -> (model, tokenizer); the converted-model and packed-checkpoint caches
    backend/     the lm-eval backends: our prefix-reusing EvalsuiteLM, stock HFLM
    records/     the typed Record, its atomic store, provenance
    console.py   our lines on the terminal, library output into the run's log
    quant/       (beside evalsuite, below it) the quantizers; never imports evalsuite
"""

"""What to run: a cell (model, quant config, tasks, limit, seed, backend) and its content id; suites and tasks; the
quantizer options as CLI flags and sweep keys; sweep files expanded into cells.

May import: quant (configs), evalsuite.errors, evalsuite.records.provenance (versions in a cell's identity) and, to
fill a model's default options, evalsuite.load.models; evalsuite.backend to resolve ``--backend auto``. Loads no model
and imports no lm-eval.
"""

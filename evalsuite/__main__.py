"""CLI: ``evalsuite eval | sweep | table | compare | ls``. Parses, calls the library, prints.

Exit status: 0 when every cell is done, 1 when any cell failed (after running the rest; they are listed at the
end), 2 for bad input (one line on stderr, nothing written, no model loaded).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from evalsuite.console import Console, terminal_out
from evalsuite.errors import UsageError

DEFAULT_RESULTS = Path(__file__).resolve().parent.parent / "results"
DEFAULT_BITS = ["16", "8", "4", "3", "2"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints usage + message; we want one line
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def _print_message(self, message: str, file=None) -> None:  # --help is for the user, not the log
        if message:
            terminal_out().write(message)


def _bits(text: str) -> list[int]:
    try:
        return [int(b) for b in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"--bits takes whole numbers such as 16 8 4 3 2 (16 = unquantized); got {text!r}") from None


def _limit(text: str | None) -> int | None:
    if text in (None, "", "none", "None"):
        return None
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--limit takes a positive whole number of items per task, or nothing for all; got {text!r}")
    return int(text)


def _batch(text: str) -> int | str:
    if text == "auto" or (text.isdigit() and int(text) > 0):
        return text if text == "auto" else int(text)
    raise UsageError(f"--batch-size takes a positive whole number or 'auto'; got {text!r}")


def add_finetune_flags(parser: argparse.ArgumentParser) -> None:
    from evalsuite.spec.finetune import MODES, OBJECTIVES, FinetuneSpec

    d = FinetuneSpec("lora-post")
    g = parser.add_argument_group("fine-tune stage (peft LoRA; defaults of the paper's run.sh, budgets far smaller)")
    g.add_argument("--finetune", choices=MODES, help="lora-post: adapters on the frozen quantized model; lora-pre: "
                   "LoRA on the 16-bit model, merged, then quantized")
    for name, kind, text in (("steps", int, "optimizer steps"), ("rank", int, "LoRA rank"), ("alpha", int, "LoRA alpha"),
                             ("lr", float, "AdamW learning rate"), ("batch", int, "windows per step"),
                             ("seqlen", int, "tokens per window"), ("seed", int, "window sampling and init seed"),
                             ("log_every", int, "loss curve every this many steps")):
        g.add_argument(f"--ft-{name.replace('_', '-')}", dest=f"ft_{name}", type=kind, default=None,
                       help=f"{text} (default {getattr(d, name)})")
    g.add_argument("--ft-data", dest="ft_data", default=None,
                   help="pydoc (default: the calibration part of the bundled corpus), a text file, or a hub dataset name")
    g.add_argument("--ft-objective", dest="ft_objective", default=None,
                   help=f"{' | '.join(OBJECTIVES)} (default: distill for lora-post, lm for lora-pre)")


def finetune_from_args(args: argparse.Namespace):
    from evalsuite.spec.finetune import FinetuneSpec

    given = {k[3:]: v for k, v in vars(args).items() if k.startswith("ft_") and v is not None}
    if args.finetune is None:
        if given:
            raise UsageError(f"--ft-{next(iter(given)).replace('_', '-')} needs --finetune lora-post or lora-pre")
        return None
    return FinetuneSpec(args.finetune, **given)


def build_parser() -> argparse.ArgumentParser:
    from evalsuite.spec.cell import BACKENDS, DEFAULT_BACKEND, DEFAULT_SEED
    from evalsuite.spec.options import add_quant_flags

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="also show what libraries print (always in log.txt)")
    common.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p = _Parser(prog="evalsuite", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("eval", parents=[common], help="evaluate one model at several bit widths")
    e.add_argument("--model", default="smollm2-135m", help="alias (evalsuite ls models), local checkpoint dir, or hub id")
    e.add_argument("--method", default="rtn", help="quantizer (evalsuite ls methods)")
    e.add_argument("--bits", nargs="+", default=DEFAULT_BITS, help="bit widths; 16 = the unquantized baseline")
    e.add_argument("--suite", default="smoke", help="suite(s) or task(s), comma-separated (evalsuite ls suites)")
    e.add_argument("--limit", default="", help="items per task (default: all)")
    e.add_argument("--run", default="default", help="results/<RUN>/ receives the records")
    e.add_argument("--seed", type=int, default=DEFAULT_SEED)
    e.add_argument("--batch-size", default="auto")
    e.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS,
                   help="evalsuite: prefix KV reuse, metered; hf: stock lm-eval HFLM")
    e.add_argument("--chat-template", action="store_true", help="apply the tokenizer's chat template to prompts")
    add_quant_flags(e)
    add_finetune_flags(e)

    s = sub.add_parser("sweep", parents=[common], help="run a sweep file (models x methods x bits x suites); resumable")
    s.add_argument("config", type=Path, help="sweep YAML, e.g. sweeps/local.yaml")
    s.add_argument("--run", help="results/<RUN>/ (default: the file's run, else its name)")
    s.add_argument("--limit", default=None, help="items per task (overrides the file)")
    s.add_argument("--dry-run", action="store_true", help="list the cells, their ids and which are done; run nothing")
    s.add_argument("--retry-failed", action="store_true", help="rerun cells recorded as failed")
    s.add_argument("--executor", choices=["in-process", "ray"], help="where cells run (default: the file's, else in-process)")
    s.add_argument("--address", help="Ray cluster to join: auto or HOST:PORT (default: start a local Ray instance)")

    t = sub.add_parser("table", parents=[common], help="print a run's comparison table and rewrite its exports")
    t.add_argument("--run", default="default")

    c = sub.add_parser("compare", parents=[common], help="two runs item by item: per-task agreement, the items that differ")
    c.add_argument("run_a", help="a run under the results dir, e.g. one made with --backend hf")
    c.add_argument("run_b", help="the run to compare with it, e.g. the same cells with --backend vllm")
    c.add_argument("--show", type=int, default=20, help="differing items to print (all are in the CSV it writes)")

    ls = sub.add_parser("ls", help="list models, methods (with their options), suites or tasks")
    ls.add_argument("what", choices=["models", "methods", "suites", "tasks"])
    return p


def cmd_eval(args: argparse.Namespace, console: Console) -> int:
    from evalsuite.spec.cell import CellSpec, check_run_name
    from evalsuite.spec.options import make_quant_config, options_from_args
    from evalsuite.spec.tasks import expand_suite

    run = check_run_name(args.run)
    bits = [b for text in args.bits for b in _bits(text)]
    limit, tasks, options = _limit(args.limit), expand_suite(args.suite), options_from_args(args)
    ft = finetune_from_args(args)
    cells = [
        CellSpec(model=args.model, quant=make_quant_config(args.method, b, options, model=args.model),
                 suite=args.suite, tasks=tasks, limit=limit, seed=args.seed, backend=args.backend,
                 batch_size=_batch(args.batch_size), chat_template=args.chat_template, finetune=ft)
        for b in dict.fromkeys(bits)
    ]
    cells = list({c.quant: c for c in cells}.values())  # e.g. MPO: one cell whatever the bits
    return _run(cells, args.results_dir / run, console)


def cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    from evalsuite.run.cells import plan
    from evalsuite.run.preflight import preflight
    from evalsuite.spec import sweep

    doc = sweep.load(args.config)
    cells = sweep.cells(doc, _limit(args.limit))
    run_dir = args.results_dir / sweep.run_name(doc, args.run, args.config)
    executor, retries = sweep.executor(doc, args.executor)
    gates = sweep.recovery(doc, cells)
    if args.address and executor != "ray":
        raise UsageError("--address names a Ray cluster; add --executor ray (or executor: ray in the sweep file)")
    if args.dry_run:
        for step in plan(cells, run_dir, preflight(cells)):
            console.show(f"{step.cell_id}  {step.state:7s}  {step.cell.describe()}")
        return 0
    return _run(cells, run_dir, console, retry_failed=args.retry_failed, executor=(executor, args.address, retries),
                gates=gates)


def _executor(name: str, address: str | None, retries: int):
    if name == "ray":
        from evalsuite.run.ray_executor import RayExecutor

        return RayExecutor(address, max_retries=retries)
    from evalsuite.run.executors import InProcess

    return InProcess()


def _run(cells, run_dir: Path, console: Console, retry_failed: bool = False, executor=("in-process", None, 0),
         gates: dict[str, float] | None = None) -> int:
    from evalsuite.run.cells import failure_lines, run_cells
    from evalsuite.run.preflight import check_resources, preflight

    refs = preflight(cells)  # raises on bad input: nothing below runs, nothing is written
    runner = _executor(*executor)
    try:
        check_resources(cells, runner.nodes(), f"the {runner.name} executor ({executor[1] or 'this machine'})")
        console.attach(run_dir / "log.txt")
        records = run_cells(cells, run_dir, refs, log=console.say, retry_failed=retry_failed, executor=runner)
    finally:
        runner.close()
    page = _print_table(run_dir, console)
    failed = failure_lines(records)
    if failed:
        console.say(f"\n{len(failed)} of {len(records)} cells failed:")
        for line in failed:
            console.say(f"  {line}")
    below = _gates(run_dir, gates or {})
    if below:
        console.say(f"\n{len(below)} cell x task results below their recovery gate:")
        for line in below:
            console.say(f"  {line}")
    console.show(f"report: {_shown(page)}")
    return 1 if failed or below else 0


def _gates(run_dir: Path, gates: dict[str, float]) -> list[str]:
    if not gates:
        return []
    from evalsuite import report
    from evalsuite.report.gates import below_gates, gate_lines

    return gate_lines(below_gates(report.load(run_dir), gates))


def _print_table(run_dir: Path, console: Console) -> Path:
    """Rewrite the run's exports, print its table and what was written; return the path of its report.html."""
    from evalsuite import report
    from evalsuite.records import store

    records, problems = store.read_run(run_dir)
    for line in problems:
        console.say(f"warning: {line}")
    paths = report.export_all(run_dir)  # leaderboard.csv, significance, flips, report.md/.tex/.html, plots
    console.show(report.format_table(report.summary(report.leaderboard(report.tidy(records)))))
    console.show(f"\nwrote {len(paths)} files to {run_dir}: {', '.join(p.name for p in paths)}")
    return run_dir / "report.html"


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it (results/<RUN>/report.html)."""
    path = path.resolve()
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def cmd_table(args: argparse.Namespace, console: Console) -> int:
    from evalsuite.spec.cell import check_run_name

    run_dir = args.results_dir / check_run_name(args.run)
    if not run_dir.is_dir():
        raise UsageError(f"no results for run {args.run!r} under {args.results_dir}; run `make eval RUN={args.run}` first")
    console.attach(run_dir / "log.txt")
    console.show(f"report: {_shown(_print_table(run_dir, console))}")
    return 0


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from evalsuite.report import compare, format_table, write_csv
    from evalsuite.spec.cell import check_run_name

    dirs = [args.results_dir / check_run_name(run) for run in (args.run_a, args.run_b)]
    for run, run_dir in zip((args.run_a, args.run_b), dirs):
        if not run_dir.is_dir():
            raise UsageError(f"no results for run {run!r} under {args.results_dir}; list the runs with `ls {args.results_dir}`")
    summary, diffs = compare(*dirs)
    if summary.empty:
        raise UsageError(f"runs {args.run_a!r} and {args.run_b!r} share no cell (same model, precision, suite, limit, "
                         f"seed and chat template) with items in both")
    out = dirs[1] / f"compare-{args.run_a}.csv"
    write_csv(diffs, out)
    console.show(format_table(summary))
    console.show(f"\n{len(diffs)} items answered differently" + (f"; the first {args.show}:" if len(diffs) > args.show else ":"))
    if len(diffs):
        console.show(format_table(diffs.head(args.show)))
    console.show(f"\nall differing items: {out}")
    return 0


def cmd_ls(args: argparse.Namespace, console: Console) -> int:
    if args.what == "models":
        from evalsuite.load.models import aliases

        for name, entry in aliases().items():
            console.show(f"{name:14s} {'bundled (offline)' if 'bundled' in entry else entry['hub']}")
    elif args.what == "methods":
        import quant
        from evalsuite.spec.options import quant_options

        for method in quant.known_methods():
            flags = [o.flag for o in quant_options().values() if method in o.methods]
            console.show(f"{method:8s} {' '.join(flags) or '(the unquantized baseline)'}")
    elif args.what == "suites":
        from evalsuite.spec.tasks import suites_file

        for name, members in suites_file()["suites"].items():
            console.show(f"{name:8s} {', '.join(members)}")
    else:
        from evalsuite.spec.tasks import known_task_names

        console.show("\n".join(sorted(known_task_names())))
    return 0


COMMANDS = {"eval": cmd_eval, "sweep": cmd_sweep, "table": cmd_table, "compare": cmd_compare, "ls": cmd_ls}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the console goes up before anything heavy is imported, so library output at import time is routed too
    with Console(verbose=bool({"-v", "--verbose"} & set(argv))) as console:
        from quant import QuantError

        try:
            args = build_parser().parse_args(argv)
            return COMMANDS[args.command](args, console)
        except (UsageError, QuantError) as e:
            console.say(f"evalsuite: error: {' '.join(str(e).split())}")
            return 2
        except KeyboardInterrupt:
            console.say("evalsuite: interrupted; finished cells are recorded, rerun the same command to resume")
            return 130


if __name__ == "__main__":
    sys.exit(main())

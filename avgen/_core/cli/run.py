"""`avgen run`: recipes through every stage, resumable; several recipes end with a comparison."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from avgen._core.cli import THREADS_OPTION, cli, console, err_console
from avgen._core.errors import AvgenError


@cli.command("run")
@click.argument("recipes", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set train.epochs=5 (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), help="Folder for run directories (default: the recipe's run.out).")
@click.option("--fresh", is_flag=True, help="Start the run over instead of resuming it.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where models run (default: the recipe's run.device).")
@click.option("--only", type=click.Choice(["prepare", "featurize", "fit", "generate", "evaluate", "report"]),
              help="Run only this stage (again).")
@click.option("--workers", type=click.IntRange(0, 64), default=0, show_default=True,
              help="DataLoader worker processes for decoding video.")
@click.option("--strict", is_flag=True,
              help="Stop at the first unreadable media file instead of skipping its clips (skipped.txt lists them).")
@click.option("--jobs", type=click.IntRange(0, 256), default=0, show_default=True,
              help="Several runs: how many finish side by side after their data and features are made, each in its "
                   "own process with the cores shared out (0: one per core and one more; 1: one after the other, as one log).")
@THREADS_OPTION
@click.pass_context
def run_cmd(ctx: click.Context, recipes: tuple[Path, ...], overrides: tuple[str, ...], out: Path | None, fresh: bool,
            device: str | None, only: str | None, workers: int, strict: bool, jobs: int, threads: int) -> None:
    """Run one or more RECIPES (TOML files, folders of them, or names of shipped recipes) through every stage.

    A name that is not a file, such as `quickstart`, is a recipe that ships with avgen
    (`avgen recipes` lists them); its data and runs go under the working directory.

    A re-run of the same recipe resumes after the last finished stage; several recipes
    share the feature cache and end with a comparison table.
    """
    from avgen._core.errors import resumable

    with resumable():  # its write errors say that the same command resumes
        _run_recipes(recipes, overrides, out, fresh, device, only, workers, strict, threads, jobs)


def _run_recipes(recipes: tuple[Path, ...], overrides: tuple[str, ...], out: Path | None, fresh: bool,
                 device: str | None, only: str | None, workers: int, strict: bool, threads: int = 0,
                 jobs: int = 1) -> None:
    """Validate every recipe and build its data and representation, then run them one by one."""
    paths = _expand_recipes(recipes)  # an unknown name stops here, before torch is imported
    from avgen._core.recipe import resolved_as_run
    from avgen._core.recipefiles import load_recipes
    from avgen._core.loading import install_hinted, run_environment
    from avgen._core.distributed import leave_process_group, resolve_device
    from avgen._core.runner import Run
    from avgen._core.rundir import STAGES
    from avgen._core.threads import apply_threads, plan_threads
    from avgen._core.cli.parallel import finish_side_by_side, jobs_for

    plan = apply_threads(plan_threads(threads, workers))

    import time

    started = time.perf_counter()
    loaded = []
    for p in paths:  # validate all before running any; a run's own recipe names what to pip install
        with install_hinted(run_environment(Path(p).parent) if Path(p).name == "recipe.toml" else {}):
            loaded += load_recipes(p, overrides)
    runs, run_dirs = [], []
    for recipe in loaded:
        if out is not None:
            recipe.run.out = out
        dev = resolve_device(device or recipe.run.device)
        run_dir = recipe.run.out / recipe.run.group / recipe.run.name
        if not fresh:  # a run started before a component changed a default resumes with the defaults it started with
            recipe = resolved_as_run(recipe, run_dir)
        if run_dir in run_dirs:
            raise AvgenError(f"two recipes write the same run directory {run_dir}; give each a different run.name")
        run_dirs.append(run_dir)
        runs.append(Run(recipe, run_dir, dev, console=err_console, num_workers=workers, strict=strict, threads=plan))
    for run in runs:  # errors of the data and representation settings come before any run directory exists
        run.preflight()
    jobs = jobs_for(jobs, len(runs), plan.cores) if only is None and runs[0].world == 1 else 1
    for run in runs:
        err_console.print(f"[bold]avgen run[/bold] {escape(str(run.recipe.source))} -> {escape(str(run.run_dir))} "
                          f"on {run.device}")
        run.execute(only=only, fresh=fresh, last="featurize" if jobs > 1 else None)
        if run.rank == 0 and jobs == 1:
            console.print(f"run directory: {run.run_dir}", markup=False, soft_wrap=True)
    if jobs > 1:  # the data and features are made: the runs not yet done finish side by side (cli/parallel.py)
        unfinished = [run for run in runs if not all(run.dir.done(stage) for stage in STAGES)]
        if unfinished:
            finish_side_by_side(unfinished, min(jobs, len(unfinished)), plan.cores, workers, strict, err_console)
        for run in runs:
            console.print(f"run directory: {run.run_dir}", markup=False, soft_wrap=True)
    leave_process_group()
    if runs and runs[0].rank != 0:  # under torchrun only rank 0 compares and reports
        return
    if len(run_dirs) > 1:
        if only is not None and STAGES.index(only) < STAGES.index("evaluate"):
            # the stage re-run marked evaluate as not done: metrics.json is missing or out of date
            err_console.print(f"no comparison: --only {only} runs no evaluate stage (run the same command without "
                              f"--only to finish the runs and compare them)", markup=False, soft_wrap=True)
        else:
            _compare(click.get_current_context(), run_dirs)
    err_console.print(f"total time: {time.perf_counter() - started:.1f} s")


def _compare(ctx: click.Context, run_dirs: list[Path]) -> None:
    """The comparison table of several runs (``avgen compare`` when a plugin provides it)."""
    command = ctx.find_root().command.get_command(ctx, "compare")
    if command is None:  # the table is the eval plugin's (avgen compare); the core keeps no second copy
        err_console.print("no `compare` command is loaded (it comes with the eval plugin); runs: "
                          + ", ".join(str(d) for d in run_dirs), markup=False, soft_wrap=True)
        return
    parents = {d.parent for d in run_dirs}
    where = (parents.pop() if len(parents) == 1 else Path(".")) / "compare.html"
    ctx.invoke(command, run_dirs=tuple(run_dirs), output=where, as_json=False)


def _expand_recipes(items: tuple[Path, ...]) -> list[Path]:
    """The recipe files: folders expanded, names of shipped recipes resolved (``avgen._core.recipefiles.find_recipe``)."""
    from avgen._core.recipefiles import find_recipe
    paths: list[Path] = []
    for item in map(find_recipe, items):
        if item.is_dir():
            found = sorted(item.glob("*.toml"))
            if not found:
                raise AvgenError(f"{item}: folder holds no .toml recipes")
            paths.extend(found)
        else:
            paths.append(item)
    return paths



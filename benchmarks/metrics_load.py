"""The exporter under load: 1,000 scrapes while a GIL-heavy program runs.

A program with 4 threads of pure-Python CPU work counts the loop iterations it does in
``--seconds`` (its throughput), pinned with all its threads to one core. Two variants
alternate ``--reps`` times:

* serving: the program runs ``gil_adapt.serve_metrics()`` and a scraper process (on the
  other cores) fetches its ``/metrics``, paced to ``--scrapes`` (+5 %) requests over the
  run;
* baseline: no exporter in the program; the same scraper, paced the same, fetches a
  canned response of the same size from a separate server process.

The baseline's scraper matters: on a small VM the "other" core may share a physical core
with the program's (a CPU burner there slowed this program by 40 % on the development
machine), so a baseline without the scraper would charge its CPU to the exporter.

Printed: the throughput of each run and the ratio of medians (target: at least 0.99, at
most 1 % slower), the scrapes made, failed and their latency, whether the program exited
cleanly, and the GIL-held and CPU time of the exporter's thread in the program (the
helper's feeder, or the server thread) as a share of the run, exact from the ledger.

``--in-process`` measures ``serve_metrics(in_process=True)`` (a server thread in the
program) instead of the default helper process.

  python benchmarks/metrics_load.py [--reps 3] [--seconds 30] [--scrapes 1000] [--in-process]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
from typing import Any, Dict, List

PROGRAM = textwrap.dedent("""
    import sys, threading, time
    seconds, port, in_process = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    import gil_adapt
    gil_adapt.install()
    server = gil_adapt.serve_metrics(port=port, in_process=in_process) if port else None
    counts = [0] * 4
    stop = threading.Event()
    def body(k):
        while not stop.is_set():
            x = 0
            for i in range(1000):
                x += i
            counts[k] += 1
    ts = [threading.Thread(target=body, args=(k,)) for k in range(4)]
    before = gil_adapt.snapshot()
    print("ready", flush=True)
    t0 = time.perf_counter()
    for t in ts: t.start()
    time.sleep(seconds)
    stop.set()
    for t in ts: t.join()
    elapsed = time.perf_counter() - t0
    held = cpu = 0.0
    if server:
        after = gil_adapt.snapshot()
        a, b = after["threads"][server.native_id], before["threads"][server.native_id]
        held, cpu = (a["gil_held_ns"] - b["gil_held_ns"]) / 1e9, (a["cpu_ns"] - b["cpu_ns"]) / 1e9
        server.close()
    print(f"{sum(counts) * 1000 / elapsed:.1f} {held / elapsed:.6f} {cpu / elapsed:.6f}",
          flush=True)
""")

DUMMY_SERVER = textwrap.dedent("""
    import socket, sys
    body = b"x" * int(sys.argv[1])
    head = (b"HTTP/1.0 200 OK\\r\\nContent-Type: text/plain; version=0.0.4\\r\\n"
            b"Content-Length: %d\\r\\n\\r\\n" % len(body))
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    print(s.getsockname()[1], flush=True)
    while True:
        c, _ = s.accept()
        req = b""
        while b"\\r\\n\\r\\n" not in req:
            chunk = c.recv(8192)
            if not chunk:
                break
            req += chunk
        c.sendall(head + body)
        c.close()
""")

SCRAPER = textwrap.dedent("""
    import sys, time, urllib.request
    url, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    start = time.monotonic()
    deadline = start + seconds
    ok = failed = 0
    lat, errors, body = [], {}, ""
    while time.monotonic() < deadline:
        due = start + (ok + failed) * seconds / n   # paced: n requests over the run
        if time.monotonic() < due:
            time.sleep(due - time.monotonic())
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = r.read().decode()
            ok += 1
        except Exception as e:
            failed += 1
            kind = type(e).__name__ + ": " + str(e)[:60]
            errors[kind] = errors.get(kind, 0) + 1
        lat.append(time.perf_counter() - t0)
    parsed = -1
    if body.startswith("# HELP"):
        try:
            from prometheus_client.parser import text_string_to_metric_families
            parsed = len(list(text_string_to_metric_families(body)))
        except ImportError:
            pass
    lat.sort()
    med = lat[len(lat) // 2] * 1e3 if lat else float("nan")
    p99 = lat[int(len(lat) * 0.99)] * 1e3 if lat else float("nan")
    print(ok, failed, f"{med:.2f}", f"{p99:.2f}", parsed)
    print(max(errors, key=errors.get) if errors else "-")
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(files: Dict[str, str], args: argparse.Namespace, serve: bool, core: set,
            others: set) -> Dict[str, Any]:
    def on(cpus: set) -> Any:
        return lambda: os.sched_setaffinity(0, cpus)

    dummy = None
    if serve:
        port = free_port()
    else:
        dummy = subprocess.Popen([sys.executable, files["dummy"], "7000"],
                                 stdout=subprocess.PIPE, text=True, preexec_fn=on(others))
        assert dummy.stdout is not None
        port = int(dummy.stdout.readline())
    proc = subprocess.Popen([sys.executable, files["program"], str(args.seconds),
                             str(port if serve else 0), "1" if args.in_process else "0"],
                            stdout=subprocess.PIPE, text=True, preexec_fn=on(core))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    # The scraper stops a little before the program closes its server.
    scrape = subprocess.Popen([sys.executable, files["scraper"],
                               f"http://127.0.0.1:{port}/metrics", str(args.scrapes * 21 // 20),
                               str(args.seconds - 0.3)],
                              stdout=subprocess.PIPE, text=True, preexec_fn=on(others))
    rate, held, cpu = (float(x) for x in proc.stdout.read().split()[-3:])
    rc = proc.wait()
    first, error = scrape.communicate()[0].split("\n")[:2]
    if dummy is not None:
        dummy.kill()
        dummy.wait()
    ok, failed, med, p99, parsed = first.split()
    return {"rate": rate, "rc": rc, "held": held, "cpu": cpu, "ok": int(ok),
            "failed": int(failed), "med_ms": float(med), "p99_ms": float(p99),
            "parsed": int(parsed), "error": error}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--scrapes", type=int, default=1000)
    p.add_argument("--in-process", action="store_true",
                   help="serve from a thread of the program instead of the helper process")
    args = p.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("needs at least 2 cores (the scraper runs beside the program)")
        return 2
    core, others = {cpus[-1]}, set(cpus[:-1])
    runs: Dict[bool, List[Dict[str, Any]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, text in (("program", PROGRAM), ("scraper", SCRAPER), ("dummy", DUMMY_SERVER)):
            files[name] = os.path.join(tmp, name + ".py")
            with open(files[name], "w") as fh:
                fh.write(text)
        for i in range(args.reps):
            for serve in ((False, True) if i % 2 == 0 else (True, False)):
                runs[serve].append(one_run(files, args, serve, core, others))
    print(f"4 GIL-bound threads on 1 core for {args.seconds:g} s, {args.reps} reps; "
          f"scraper paced to {args.scrapes} requests per run on {len(others)} other core(s); "
          f"exporter {'in-process thread' if args.in_process else 'helper process'}")
    for serve, label in ((False, "baseline"), (True, "serving")):
        rates = [r["rate"] for r in runs[serve]]
        print(f"{label:9} iterations/s: median {statistics.median(rates):,.0f}  runs "
              + " ".join(f"{x:,.0f}" for x in rates)
              + f"  exit codes {[r['rc'] for r in runs[serve]]}")
        for r in runs[serve]:
            short = "" if r["ok"] >= args.scrapes else f" (FEWER than {args.scrapes})"
            print(f"  scrapes ok {r['ok']}{short}, failed {r['failed']}, latency median "
                  f"{r['med_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"
                  + (f", last body parsed into {r['parsed']} families" if serve else "")
                  + (f"; most common error: {r['error']}" if r["failed"] else ""))
    for r in runs[True]:
        print(f"  exporter's thread in the program: GIL held {100 * r['held']:.3f} % of the run, "
              f"CPU {100 * r['cpu']:.3f} %")
    ratio = (statistics.median(r["rate"] for r in runs[True])
             / statistics.median(r["rate"] for r in runs[False]))
    print(f"throughput ratio serving / baseline (median): {ratio:.4f} "
          f"(slowdown {100 * (1 - ratio):.2f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

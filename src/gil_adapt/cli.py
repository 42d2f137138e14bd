"""The ``gil-adapt`` command: ``demo``, ``bench``, ``run`` (profiler) and ``info``."""
from __future__ import annotations

import json
import logging
import sys
from typing import List, Optional, Sequence

USAGE = """usage: gil-adapt <command> [options]
       gil-adapt --version

commands:
  demo     the ledger on a small threaded program (2 vs 64 threads)
  info     what this machine lets gil-adapt measure (JSON)
  bench    the benchmark suite (docs/bench.md; bench --list for its workloads and strategies)
  run      profile an unmodified program: gil-adapt run script.py [args...]

gil-adapt <command> --help tells more about each.
"""

INFO_USAGE = """usage: gil-adapt info

Prints, as JSON, what this machine and interpreter let gil-adapt measure: whether GIL
waits are exact (the hook) and why not, run-queue and lock waits, usable cores (CPU
affinity and the cgroup quota), memory limits and the free-threaded build.
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    args: List[str] = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd == "--version":
        from . import __version__
        print(f"gil-adapt {__version__}")
        return 0
    if cmd == "demo":
        from .demo import main as demo_main
        return demo_main(rest)
    if cmd == "info":
        if rest and rest[0] in ("-h", "--help"):
            print(INFO_USAGE, end="")
            return 0
        if rest:
            print(f"gil-adapt info: takes no arguments, not {rest[0]!r}", file=sys.stderr)
            return 2
        from . import capabilities, install
        install()
        print(json.dumps(capabilities(), indent=2, sort_keys=True))
        return 0
    if cmd == "bench":
        try:
            from .bench import main as bench_main
        except ImportError as e:
            print(f"gil-adapt bench: not available: {e}", file=sys.stderr)
            return 2
        return bench_main(rest)
    if cmd == "run":
        try:
            from .profiler import main as run_main
        except ImportError as e:
            print(f"gil-adapt run: not available: {e}", file=sys.stderr)
            return 2
        return run_main(rest)
    print(f"gil-adapt: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())

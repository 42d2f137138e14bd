"""Builds the C core (csrc/) into gil_adapt._core.

Every csrc/*.c is part of the extension except the simulator (sim*.c), which only the C
unit tests use. Set GIL_ADAPT_WERROR=1 to build with -Werror (the test command does).
"""
import glob
import os

from setuptools import Extension, setup

sources = sorted(
    p for p in glob.glob("csrc/*.c") if not os.path.basename(p).startswith("sim")
)
cflags = ["-std=c11", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden"]
if os.environ.get("GIL_ADAPT_WERROR") == "1":
    cflags.append("-Werror")

setup(
    ext_modules=[
        Extension(
            "gil_adapt._core",
            sources=sources,
            include_dirs=["csrc"],
            extra_compile_args=cflags,
            define_macros=[("_GNU_SOURCE", "1")],
            libraries=["dl", "pthread"],
        )
    ]
)

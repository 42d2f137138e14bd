"""``python -m gil_adapt ...`` is the ``gil-adapt`` command."""
import sys

from .cli import main

sys.exit(main())

"""``python -m gil_adapt.bench ...`` is ``gil-adapt bench ...``."""
import sys

from . import main

sys.exit(main())

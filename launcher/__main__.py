"""``python -m launcher ...`` is ``dynabert-launch ...``."""
import sys

from launcher.cli import main

sys.exit(main())

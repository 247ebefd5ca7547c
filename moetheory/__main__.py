"""``python -m moetheory``: the command line (moetheory.cli)."""
import sys

from .cli import main

sys.exit(main())

"""``python -m segood`` (also what torchrun launches)."""
import sys

from segood.cli import main

sys.exit(main())

"""`python -m cnnf ...`, the `cnnf` command (what `torchrun -m cnnf ...` runs in each process)."""

import sys

from cnnf.cli import main

sys.exit(main())

"""`python -m args_benchmarks COMMAND`: the same as `args-bench COMMAND`."""

import sys

from .cli import main

sys.exit(main())

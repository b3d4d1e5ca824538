"""`python -m qcal.cli ...`: the same command line as the `qcal` script."""

from qcal.cli import main

raise SystemExit(main())

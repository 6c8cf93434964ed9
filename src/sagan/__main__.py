"""`python -m sagan ...` (what torchrun runs: `torchrun --nproc_per_node N -m sagan train ...`)."""

from .cli import main

raise SystemExit(main())

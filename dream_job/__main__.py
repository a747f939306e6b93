"""`python -m dream_job ...` (also what `torchrun -m dream_job` runs)."""

from dream_job.cli import main

main()

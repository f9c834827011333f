"""`python -m jobs.generate` is `python -m jobs.generate_trajectories` (every stage is `jobs.<stage>`)."""

import sys

from jobs.generate_trajectories import main

if __name__ == "__main__":
    sys.exit(main())

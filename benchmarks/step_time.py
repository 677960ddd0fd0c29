"""Real client training steps on this CPU: see `autofednlp.bench` (also `autofednlp bench`)."""

import sys

from autofednlp.bench import main

if __name__ == "__main__":
    sys.exit(main())

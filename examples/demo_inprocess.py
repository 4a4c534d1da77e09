"""`make demo`: an in-process threshold FedAvg round (see threshold_fl/demo.py)."""

import sys

from threshold_fl.demo import main

if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: single-key vs threshold CKKS microbenchmark (threshold_fl/bench/crypto.py).

python examples/bench_crypto.py [--sizes 10000 100000 1660000] [--parties 2 3 5]
"""

import sys

from threshold_fl.bench.crypto import main

if __name__ == "__main__":
    sys.exit(main())

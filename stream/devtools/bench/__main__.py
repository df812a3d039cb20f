"""`python -m stream.devtools.bench passthrough ...`: the B0 child process."""

import sys

from stream.devtools.bench.passthrough import passthrough_main

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "passthrough":
        sys.exit(passthrough_main(sys.argv[2:]))
    sys.exit(
        "usage: python -m stream.devtools.bench passthrough ... (the bench itself: segmenter bench)"
    )

"""Entry point: ``python -m torchrec_models`` (also the ``torchrec-models`` console script)."""
import sys

from torchrec_models.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""Entry point: ``python -m torchrec_models`` (also the ``torchrec-models`` console script)."""
import sys

from torchrec_models import cli
from torchrec_models.runtime.gc_freeze import freeze_long_lived


def main() -> int:
    """The CLI as a process of its own. Everything left is frozen before the interpreter exits,
    so its final garbage collection does not walk torch's objects (0.5-1 s a process)."""
    code = cli.main()
    freeze_long_lived()
    return code


if __name__ == "__main__":
    sys.exit(main())

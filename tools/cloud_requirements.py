"""Print requirements.txt as Streamlit Community Cloud needs it: torch's CPU build.

    python tools/cloud_requirements.py > requirements.txt    # in the branch Community Cloud deploys

On Linux, `torch==X` from PyPI is the CUDA build, which pulls about 2.5 GB of NVIDIA libraries that a Community
Cloud app (no GPU, 690 MB-2.7 GB of memory) cannot use. The CPU build lives on PyTorch's own index: this prints
the same requirements with that index added and torch pinned to its `+cpu` build. Everything else is unchanged,
so the two files cannot drift apart (tests/test_cloud.py checks it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def cloud_requirements(text: str) -> str:
    lines = text.splitlines()
    torch = [i for i, line in enumerate(lines) if re.match(r"^torch==[^+\s]+\s*$", line)]
    if len(torch) != 1:
        raise SystemExit("requirements.txt must pin torch exactly once as torch==X.Y.Z")
    lines[torch[0]] = lines[torch[0]].strip() + "+cpu"
    header = [
        "# For Streamlit Community Cloud (made by tools/cloud_requirements.py): torch's CPU build from PyTorch's",
        "# index, not the CUDA build PyPI serves on Linux.",
        f"--extra-index-url {CPU_INDEX}",
    ]
    return "\n".join(header + lines) + "\n"


def main() -> int:
    sys.stdout.write(cloud_requirements(REQUIREMENTS.read_text(encoding="utf-8")))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Offline stand-in for the get-pip.py that ansible-test downloads to bootstrap pip.

ansible-test creates each sanity virtualenv without pip and runs
`get-pip.py <pip options> pip==<version> --no-setuptools --no-wheel` from
~/.ansible/test/cache/get_pip_<version>.py, downloading it from a host that is
not reachable here. This does the same job with what is: the interpreter's own
ensurepip, then pip from the package index at the version ansible-test asked for.
"""

from __future__ import annotations

import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}


def main() -> None:
    arguments = [argument for argument in sys.argv[1:] if argument not in GET_PIP_ONLY]
    subprocess.run(
        [sys.executable, "-m", "ensurepip", "--default-pip"], check=True, stdout=subprocess.DEVNULL
    )
    subprocess.run([sys.executable, "-m", "pip", "install", *arguments], check=True)


if __name__ == "__main__":
    main()

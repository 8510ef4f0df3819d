"""Copy the collection's files into <dest>/ansible_collections/skiff/fleet for ansible-test.

ansible-test must run from a directory whose path ends in
ansible_collections/<namespace>/<name>; a symlink does not count (it resolves
the working directory). The copy holds what git would commit: tracked and
untracked-but-not-ignored files as they are in the work tree, so a developer's
uncommitted change is tested and nothing ignored (.venv, .cache, tests/output)
is.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def main() -> None:
    repo = Path(sys.argv[1]).resolve()
    dest = Path(sys.argv[2]).resolve() / "ansible_collections" / "skiff" / "fleet"
    listed = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.decode()
    if dest.exists():
        shutil.rmtree(dest)
    for name in sorted({name for name in listed.split("\0") if name}):
        source = repo / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, not yet committed
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    # ansible-test lists a collection's files with git when it finds a .git in
    # the collection or above it; the copy lives under this repository's
    # ignored .cache/, so it gets a repository of its own holding exactly them.
    subprocess.run(["git", "init", "-q", str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "add", "-A"], check=True)
    print(dest)


if __name__ == "__main__":
    main()

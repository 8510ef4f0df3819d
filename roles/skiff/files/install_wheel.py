# Installs pure wheels into the running interpreter's site-packages (no pip on the host):
# argv[1] the router wheel, argv[2] a directory of extra wheels (its dependencies).
# Prints "installed" when it changed anything, "unchanged" otherwise.
import hashlib
import pathlib
import shutil
import sys
import sysconfig
import zipfile

router = pathlib.Path(sys.argv[1])
extra_dir = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else None
extras = sorted(extra_dir.glob("*.whl")) if extra_dir and extra_dir.is_dir() else []
wheels = [router, *extras]
lib = pathlib.Path(sysconfig.get_path("purelib"))
marker = pathlib.Path(sys.prefix) / "skiff-router.sha256"
digest = hashlib.sha256(
    b"".join(hashlib.sha256(w.read_bytes()).digest() for w in wheels)
).hexdigest()
if marker.is_file() and marker.read_text().strip() == digest and (lib / "skiff_router").is_dir():
    print("unchanged")
    sys.exit(0)
for wheel in wheels:
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/", 1)[0] for name in archive.namelist()}
        for top in tops:
            shutil.rmtree(lib / top, ignore_errors=True)
        archive.extractall(lib)
script = pathlib.Path(sys.prefix) / "bin" / "skiff-router"
script.write_text(
    f"#!{sys.executable}\nimport sys\nfrom skiff_router.cli import main\nsys.exit(main())\n"
)
script.chmod(0o755)
marker.write_text(digest + "\n")
print("installed")

"""Pack the bundled router (router/src/skiff_router) into a wheel, byte for byte reproducibly.

Runs on the controller. The same sources always give the same bytes (sorted
entries, fixed timestamps, fixed modes), so copying the wheel to a host is
idempotent and its sha256 identifies the router code. No build backend and no
network are needed. Prints the wheel's path; rewrites it only when it changed.
Usage: pack_router.py ROUTER_DIR OUT_DIR; prints JSON {"path", "sha256", "build_id"},
build_id also covering the Containerfile (it labels the router image).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tomllib
import zipfile
from pathlib import Path

EPOCH = (1980, 1, 1, 0, 0, 0)


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def main(router: Path, out_dir: Path) -> Path:
    project = tomllib.loads((router / "pyproject.toml").read_text())["project"]
    name, version = project["name"].replace("-", "_"), project["version"]
    dist_info = f"{name}-{version}.dist-info"
    files: dict[str, bytes] = {}
    for path in sorted((router / "src" / "skiff_router").rglob("*.py")):
        files[path.relative_to(router / "src").as_posix()] = path.read_bytes()
    requires = "".join(f"Requires-Dist: {dep}\n" for dep in project.get("dependencies", []))
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {version}\n"
        f"Requires-Python: {project.get('requires-python', '')}\n{requires}"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: skiff pack_router\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    scripts = project.get("scripts", {})
    files[f"{dist_info}/entry_points.txt"] = (
        "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())
    ).encode()
    record = [record_line(n, d) for n, d in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for entry, data in files.items():
            info = zipfile.ZipInfo(entry, EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}-{version}-py3-none-any.whl"
    if not target.is_file() or target.read_bytes() != buffer.getvalue():
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(target)
    return target


if __name__ == "__main__":
    router_dir = Path(sys.argv[1])
    wheel_path = main(router_dir, Path(sys.argv[2]))
    wheel_sha = hashlib.sha256(wheel_path.read_bytes()).hexdigest()
    containerfile = router_dir / "Containerfile"
    extra = containerfile.read_bytes() if containerfile.is_file() else b""
    build_id = hashlib.sha256(wheel_sha.encode() + extra).hexdigest()
    print(json.dumps({"path": str(wheel_path), "sha256": wheel_sha, "build_id": build_id}))

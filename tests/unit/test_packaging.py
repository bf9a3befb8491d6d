"""The package stays pure Python and host-neutral, and the wheel carries the shaders."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_does_not_load_gpu_or_numpy():
    code = "import sys, webllm_py; bad = [m for m in ('wgpu', 'numpy', 'js', 'pyodide') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_wheel_is_pure_python_and_ships_shaders(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    (whl,) = tmp_path.glob("webllm_py-*.whl")
    assert whl.name.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(whl).namelist()
    shipped = {Path(n).name for n in names if n.startswith("webllm_py/shaders/")}
    assert shipped == {p.name for p in (ROOT / "shaders").glob("*.wgsl")}
    assert not [n for n in names if n.endswith((".so", ".pyd", ".dylib"))]

"""Build scan-fast: the Python package, its Triton kernels and the C++ index engine.

`scan_fast._C` is built by CMake from csrc/ (the same CMakeLists.txt also builds
the C++ unit tests run by ctest). The Triton kernels in kernels/ ship as
`scan_fast.kernels` (PyPI already has a top-level `kernels` package).
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

VERSION = "0.1.0"
ROOT = Path(__file__).parent.resolve()


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: str = "") -> None:
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(Path(sourcedir).resolve())


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPYTHON_EXECUTABLE={sys.executable}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DSCAN_FAST_VERSION={VERSION}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        jobs = f"-j{os.cpu_count() or 1}"
        subprocess.run(["cmake", ext.sourcedir, *cmake_args], cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", "--target", "_C", jobs], cwd=build_temp, check=True)


setup(
    name="scan-fast",
    version=VERSION,
    description="Fast SCAN dataset pruning for contrastive pre-training (CLIP, MoCo v3)",
    packages=["scan_fast.kernels"] + find_packages(include=["scan_fast", "scan_fast.*"]),
    package_dir={"scan_fast": "scan_fast", "scan_fast.kernels": "kernels"},
    ext_modules=[CMakeExtension("scan_fast._C")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.10",
    install_requires=["numpy", "torch", "tqdm"],
    entry_points={"console_scripts": ["scan-fast=scan_fast.cli:main"]},
    zip_safe=False,
)

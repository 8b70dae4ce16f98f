"""Build the optional C fast path (metadata lives in pyproject.toml).

The extension is optional: if it cannot be compiled (no compiler, no Python
headers) the package installs without it and the pure Python data path runs.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "no fast path"
            print(f"WARNING: overlayd C fast path not built ({exc}); using the Python data path")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"WARNING: overlayd C fast path not built ({exc}); using the Python data path")


setup(
    ext_modules=[Extension("overlayd._fastpath", ["overlayd/_fastpath.c"],
                           extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
                           optional=True)],
    cmdclass={"build_ext": OptionalBuildExt},
)

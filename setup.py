"""The build step pyproject.toml cannot say: the pages' browser assets come with the package.

Before the usual build_py, the pinned npm files of Swagger UI and GraphiQL are fetched into
api/pages/static/vendor/ (api/pages/vendor.py: integrity-checked, skipped when already there), so
every install (`pip install .`, `pip install -e .`, `pip wheel .`, the container image) serves
them itself: nothing is fetched at run time. Everything else is configured in pyproject.toml.
"""

import importlib.util
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

VENDOR = Path(__file__).resolve().parent / "api" / "pages" / "vendor.py"


class BuildPyWithPageAssets(build_py):
    def run(self) -> None:
        # Loaded from its file: importing the api package would need the project's dependencies.
        spec = importlib.util.spec_from_file_location("_wfo_vendor", VENDOR)
        assert spec is not None and spec.loader is not None
        vendor = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = vendor  # dataclasses look their module up there
        spec.loader.exec_module(vendor)
        vendor.ensure()
        super().run()


setup(cmdclass={"build_py": BuildPyWithPageAssets})

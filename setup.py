"""
Packaging for sora2proxy.

The twistd plugin lives in the top-level C{twisted/plugins/} directory (no
C{__init__.py} there, on purpose).  For a normal install it is copied into
Twisted's own C{twisted/plugins} package.  For an editable install nothing is
copied, so the build also writes a C{.pth} file that puts the checkout's root
on C{sys.path}: Twisted then finds C{<root>/twisted/plugins/} by scanning
C{sys.path} (L{twisted.plugin.pluginPackagePaths}).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.editable_wheel import editable_wheel

HERE = os.path.dirname(os.path.abspath(__file__))


class _AlsoPutRootOnPath:
    """
    Wraps setuptools' editable strategy and adds a C{.pth} naming the root.
    """

    def __init__(self, inner, name):  # type: ignore[no-untyped-def]
        self._inner = inner
        self._name = name

    def __call__(self, wheel, files, mapping):  # type: ignore[no-untyped-def]
        self._inner(wheel, files, mapping)
        wheel.writestr(f"__editable__.{self._name}_twisted_plugins.pth", HERE + "\n")

    def __enter__(self):  # type: ignore[no-untyped-def]
        self._inner.__enter__()
        return self

    def __exit__(self, *exc_info):  # type: ignore[no-untyped-def]
        return self._inner.__exit__(*exc_info)


class EditableWithPlugins(editable_wheel):  # type: ignore[misc]
    """
    An editable install that also makes the root-level twistd plugin visible.
    """

    def _select_strategy(self, name, tag, build_lib):  # type: ignore[no-untyped-def]
        return _AlsoPutRootOnPath(super()._select_strategy(name, tag, build_lib), name)


setup(
    name="sora2proxy",
    cmdclass={"editable_wheel": EditableWithPlugins},
    version="0.1.0",
    description="A Twisted API proxy that knows when its backend is down and retries only what is safe.",
    long_description=Path(HERE, "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    package_dir={"": "src", "twisted.plugins": "twisted/plugins"},
    # Every package under src/ (find_packages does not see twisted.plugins: it has no __init__.py).
    packages=[*find_packages("src"), "twisted.plugins"],
    package_data={"sora2proxy": ["py.typed"]},
    install_requires=[
        "twisted[tls,http2]>=24.7.0",
        "treq>=23.11.0",
        "klein>=23.5.0",
        "attrs>=23.1.0",
        "hyperlink>=21.0.0",
        "prometheus_client>=0.17",
        "txredisapi>=1.4.10",
        "httptools>=0.6.4",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "coverage[toml]>=7",
            "hypothesis>=6",
            "docutils>=0.20",
            "mypy>=1.10",
            "mypy-zope>=1.0",
            "ruff>=0.5",
            "trustme>=1.1",
            "requests>=2.31",
            "websockets>=13",
            "httpbin>=0.10",
            "pyyaml>=6",
            "h11>=0.14",
        ],
    },
    zip_safe=False,
)

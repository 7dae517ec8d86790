"""Build hook for the one compiled module, ``mnistlab._recipe`` (the costly steps of the picture
recipe; see src/mnistlab/_recipe.c). Optional: where no C compiler is found the build goes on
without it and ``mnistlab.preprocess`` runs its NumPy code, which gives the same numbers."""

import sys

from setuptools import Extension, setup

# No fast-math and no fused multiply-add: the compiled steps must round as NumPy's do.
FLAGS = ["/O2", "/fp:precise"] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-fast-math"]

setup(ext_modules=[Extension("mnistlab._recipe", ["src/mnistlab/_recipe.c"], extra_compile_args=FLAGS,
                             optional=True)])

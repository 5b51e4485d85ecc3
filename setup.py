"""The one compiled part: the refit's batched small-matrix routine (neuro_opt/gp/_refit_terms.c).

Everything else is declared in pyproject.toml. The extension is optional: without a C compiler the
install still succeeds and the engine keeps its torch path (neuro_opt.gp.refit_terms.available()).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "neuro_opt.gp._refit_terms",
            sources=["neuro_opt/gp/_refit_terms.c"],
            # no contraction into FMA: each SIMD clone (target_clones) then gives the same bits
            extra_compile_args=["-O3", "-ffp-contract=off"],
            libraries=["m"],
            optional=True,
        )
    ]
)

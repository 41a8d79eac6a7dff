"""Companion training methods in the same harness as PaBT: plain BNN, BNN+, XNOR-Net(++), iterative.

Importing this package registers, in :mod:`binforge.model.train`'s method
registry, the ``--method`` values

=============  ==================================================================
``ste``        plain BNN (Hubara et al.): sign, hardtanh STE, clipped latent weights
``bnn+``       BNN+: SignSwish gradient, R1/R2 with learned per-filter alpha
``xnor``       XNOR-Net: analytic alpha = mean |W| (optionally the input factor K)
``xnor++``     XNOR-Net++: learned fused Gamma, cases 1-4
``iterative``  iterative layer-by-layer weight binarization (5 orders)
=============  ==================================================================

Each method's options live in ``RunConfig.method_options`` (saved in
``config.json``, so a trained run rebuilds) and on the command line as
``--<option-with-dashes>``: :func:`add_method_arguments` adds them to a
parser and :func:`method_options_from_args` reads them back.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..train import register_method
from .bnnplus import BNNPlusMethod
from .iterative import IterativeMethod
from .ste import CompanionMethod, MethodOption, SteMethod
from .xnor import XnorMethod, XnorPPMethod

__all__ = [
    "COMPANION_METHODS",
    "CompanionMethod",
    "MethodOption",
    "method_option_specs",
    "add_method_arguments",
    "method_options_from_args",
]

#: ``--method`` name -> class, in the order the docs list them.
COMPANION_METHODS: dict[str, type[CompanionMethod]] = {
    cls.name: cls for cls in (SteMethod, BNNPlusMethod, XnorMethod, XnorPPMethod, IterativeMethod)
}

for _name, _cls in COMPANION_METHODS.items():
    register_method(_name, _cls)


def method_option_specs() -> list[tuple[str, MethodOption]]:
    """``(method name, option)`` for every companion method option."""
    return [(name, spec) for name, cls in COMPANION_METHODS.items() for spec in cls.options]


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every companion method's ``--option`` to ``parser`` (in one argument group).

    Defaults are ``None`` on the parser so :func:`method_options_from_args`
    records only what was given; the method applies its own default.
    """
    group = parser.add_argument_group("companion methods (ste, bnn+, xnor, xnor++, iterative)")
    for _, spec in method_option_specs():
        help_text = spec.help.replace("%(default)s", str(spec.default))
        if spec.kind is bool:
            group.add_argument(spec.flag, dest=spec.key, action="store_true", default=None,
                               help=help_text)
        else:
            group.add_argument(spec.flag, dest=spec.key, type=spec.kind, default=None,
                               choices=spec.choices, help=help_text)


def method_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``args.method`` that were given on the command line, as a json-able dict.

    Options of other methods given alongside are an error (they would be ignored).
    """
    method = getattr(args, "method", None)
    own = {spec.key for spec in COMPANION_METHODS[method].options} if method in COMPANION_METHODS else set()
    options: dict[str, Any] = {}
    for name, spec in method_option_specs():
        value = getattr(args, spec.key, None)
        if value is None:
            continue
        if spec.key not in own:
            from binforge.errors import BinforgeError

            raise BinforgeError(f"{spec.flag} belongs to --method {name}, not {method}: "
                                "drop it or change the method")
        options[spec.key] = value
    return options

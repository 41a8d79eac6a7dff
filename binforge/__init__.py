"""binforge: from a convolutional network to a proven binary-neural-network accelerator.

Stages (each a subpackage): ``binforge.model`` (train and prune, PaBT),
``binforge.compiler`` (network IR), ``binforge.hw`` (Amaranth gateware),
``binforge.sim`` (golden model and cocotb verification), ``binforge.boards``
(FPGA builds).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]

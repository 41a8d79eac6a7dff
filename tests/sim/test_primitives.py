"""The primitive models taken from Yosys's cell library for Verilog elaborated for a board."""

import re

from binforge.sim.primitives import PRIMITIVES, primitive_models


def modules(text):
    return re.findall(r"^module (\w+)", text, re.M)


def test_models_of_the_primitives_instantiated_each_module_once():
    assert primitive_models("module top;\nendmodule\n") == ""
    spram = primitive_models("  SB_SPRAM256KA tile (\n")
    assert modules(spram) == ["SB_SPRAM256KA"]
    chains = primitive_models("  CCU2C #(\n  CCU2C #(\n")
    assert modules(chains) == ["CCU2C", "LUT4", "LUT2"]
    both = primitive_models("  CCU2C #(\n  SB_SPRAM256KA tile (\n")
    assert sorted(modules(both)) == sorted({m for needs in PRIMITIVES.values() for _, m in needs})
    # a name inside another identifier or a comment is not an instance
    assert primitive_models("  wire my_CCU2C_out;\n  // SB_SPRAM256KA\n") == ""

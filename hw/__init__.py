"""binforge's gateware: an XNOR-popcount accelerator generated per network (Amaranth 0.5).

Blocks (one ``wiring.Component`` per module): :mod:`.pe`, :mod:`.array`, :mod:`.window`,
:mod:`.output_stage`, :mod:`.maxpool`, :mod:`.sequencer`, :mod:`.accelerator`, :mod:`.top`.
The mapping of a network onto the array and the cycle model are in :mod:`.plan`;
Verilog generation in :mod:`.generate`. See docs/hardware.md.
"""

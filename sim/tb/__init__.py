"""cocotb testbenches: they run inside the HDL simulator, started by :mod:`binforge.sim.cocotb_runner`.

The shared pieces (clock and reset, valid/ready stream driver and sink with seeded
random stalls, the stimulus file and the scoreboard report) live in
:mod:`binforge.sim.tb.harness` and :mod:`binforge.sim.tb.streams`; each block has
its own testbench module whose cocotb tests read their stimulus and expected values
from the file the pytest side (or ``binforge sim``) wrote.
"""

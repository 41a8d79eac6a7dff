"""A bit-level model of the host's end of a UART line, for Amaranth simulator testbenches.

It drives and samples single-bit signals cycle by cycle exactly as a serial port
would (8N1, LSB first), so the board's gateware is tested through the same wire it
uses on hardware. The host may run at a slightly different baud rate from the
board (``divisor`` here need not equal the board's) to test clock tolerance.
"""

from __future__ import annotations

__all__ = ["send_bytes", "receive_bytes"]


async def send_bytes(ctx, line, data: bytes, divisor: int, *, gap: int = 0) -> None:
    """Drive ``data`` onto ``line`` (the board's ``rx``), ``divisor`` cycles per bit.

    ``gap`` idle cycles go between bytes. The line is left idle (high).
    """
    for byte in data:
        bits = [0] + [(byte >> i) & 1 for i in range(8)] + [1]
        for bit in bits:
            ctx.set(line, bit)
            await ctx.tick().repeat(divisor)
        if gap:
            await ctx.tick().repeat(gap)
    ctx.set(line, 1)


async def receive_bytes(ctx, line, count: int, divisor: int, *, timeout: int = 1_000_000) -> bytes:
    """Read ``count`` bytes from ``line`` (the board's ``tx``), ``divisor`` cycles per bit.

    Waits for each start edge, samples every bit in its middle and checks the stop bit.

    Raises
    ------
    TimeoutError
        When no start bit comes within ``timeout`` cycles.
    ValueError
        On a framing error (stop bit 0) or a start bit shorter than half a bit.
    """
    out = bytearray()
    for _ in range(count):
        waited = 0
        while ctx.get(line):
            await ctx.tick()
            waited += 1
            if waited > timeout:
                raise TimeoutError(f"no start bit within {timeout} cycles after {len(out)} bytes")
        await ctx.tick().repeat(divisor // 2)
        if ctx.get(line):
            raise ValueError("start bit shorter than half a bit")
        byte = 0
        for i in range(8):
            await ctx.tick().repeat(divisor)
            byte |= ctx.get(line) << i
        await ctx.tick().repeat(divisor)
        if not ctx.get(line):
            raise ValueError(f"framing error: stop bit 0 after byte 0x{byte:02X}")
        out.append(byte)
    return bytes(out)

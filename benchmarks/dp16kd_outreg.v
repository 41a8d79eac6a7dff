// One DP16KD, its read data into flip-flops, their XOR into flip-flops: what nextpnr-ecp5
// times for a block-RAM read without and with the output register (docs/RESULTS.md,
// "Block-RAM read registers inside the block RAMs"). MODE is "NOREG" or "OUTREG".
module top(input clk, input [8:0] addr, input [17:0] din, input we, output reg [17:0] q);
  wire [17:0] dob;
  reg [17:0] r;
  DP16KD #(.DATA_WIDTH_A(18), .DATA_WIDTH_B(18), .REGMODE_A("NOREG"), .REGMODE_B(`MODE)) ram (
    .CLKA(clk), .CEA(1'b1), .OCEA(1'b1), .WEA(we), .RSTA(1'b0), .CSA0(1'b0), .CSA1(1'b0), .CSA2(1'b0),
    .ADA0(1'b0), .ADA1(1'b0), .ADA2(1'b0), .ADA3(1'b0), .ADA4(addr[0]), .ADA5(addr[1]), .ADA6(addr[2]), .ADA7(addr[3]), .ADA8(addr[4]), .ADA9(addr[5]), .ADA10(addr[6]), .ADA11(addr[7]), .ADA12(addr[8]), .ADA13(1'b0),
    .DIA0(din[0]), .DIA1(din[1]), .DIA2(din[2]), .DIA3(din[3]), .DIA4(din[4]), .DIA5(din[5]), .DIA6(din[6]), .DIA7(din[7]), .DIA8(din[8]), .DIA9(din[9]), .DIA10(din[10]), .DIA11(din[11]), .DIA12(din[12]), .DIA13(din[13]), .DIA14(din[14]), .DIA15(din[15]), .DIA16(din[16]), .DIA17(din[17]),
    .CLKB(clk), .CEB(1'b1), .OCEB(1'b1), .WEB(1'b0), .RSTB(1'b0), .CSB0(1'b0), .CSB1(1'b0), .CSB2(1'b0),
    .ADB0(1'b0), .ADB1(1'b0), .ADB2(1'b0), .ADB3(1'b0), .ADB4(addr[8]), .ADB5(addr[7]), .ADB6(addr[6]), .ADB7(addr[5]), .ADB8(addr[4]), .ADB9(addr[3]), .ADB10(addr[2]), .ADB11(addr[1]), .ADB12(addr[0]), .ADB13(1'b0),
    .DOB0(dob[0]), .DOB1(dob[1]), .DOB2(dob[2]), .DOB3(dob[3]), .DOB4(dob[4]), .DOB5(dob[5]), .DOB6(dob[6]), .DOB7(dob[7]), .DOB8(dob[8]), .DOB9(dob[9]), .DOB10(dob[10]), .DOB11(dob[11]), .DOB12(dob[12]), .DOB13(dob[13]), .DOB14(dob[14]), .DOB15(dob[15]), .DOB16(dob[16]), .DOB17(dob[17]));
  always @(posedge clk) begin r <= dob; q <= r ^ {r[0], r[17:1]}; end
endmodule

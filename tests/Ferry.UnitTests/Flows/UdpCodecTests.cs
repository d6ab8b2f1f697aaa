using System.Buffers.Binary;
using Ferry.Client;
using Ferry.Client.Access;
using Ferry.Core.Flows;

namespace Ferry.UnitTests.Flows;

/// <summary>The UDP flow wire format (varint datagrams, stream records), --forward specs with a protocol, and the SOCKS5 UDP header.</summary>
public sealed class UdpCodecTests
{
    private static CancellationToken Token => TestContext.Current.CancellationToken;

    [Theory]
    // RFC 9000 appendix A.1's examples, and each length's edges.
    [InlineData(37L, "25")]
    [InlineData(15293L, "7bbd")]
    [InlineData(494878333L, "9d7f3e7d")]
    [InlineData(151288809941952652L, "c2197c5eff14e88c")]
    [InlineData(0L, "00")]
    [InlineData(63L, "3f")]
    [InlineData(64L, "4040")]
    [InlineData(16383L, "7fff")]
    [InlineData(16384L, "80004000")]
    [InlineData(1073741823L, "bfffffff")]
    [InlineData(1073741824L, "c000000040000000")]
    [InlineData((1L << 62) - 1, "ffffffffffffffff")]
    public void Varints_match_RFC_9000_and_round_trip(long value, string hex)
    {
        var buffer = new byte[8];
        var length = UdpFlowFraming.WriteVarint(buffer, value);
        Assert.Equal(hex, Convert.ToHexStringLower(buffer, 0, length));
        Assert.Equal(length, UdpFlowFraming.VarintLength(value));
        Assert.True(UdpFlowFraming.TryReadVarint(buffer.AsSpan(0, length), out var read, out var consumed));
        Assert.Equal(value, read);
        Assert.Equal(length, consumed);
        Assert.False(UdpFlowFraming.TryReadVarint(buffer.AsSpan(0, length - 1), out _, out _));
    }

    [Fact]
    public void Varints_out_of_range_are_refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => UdpFlowFraming.VarintLength(-1));
        Assert.Throws<ArgumentOutOfRangeException>(() => UdpFlowFraming.VarintLength(1L << 62));
    }

    [Theory]
    [InlineData(0L, 0)]
    [InlineData(4L, 1)]
    [InlineData(252L, 100)]
    [InlineData(4L * 70_000, 1200)]
    [InlineData(4L * 2_000_000_000, 3)]
    public void Datagrams_carry_the_quarter_stream_id_then_the_payload(long streamId, int payloadLength)
    {
        var quarter = UdpFlowFraming.QuarterStreamId(streamId);
        Assert.Equal(streamId / 4, quarter);
        var payload = FlowTestSupport.RandomBytes(payloadLength, seed: payloadLength);
        var datagram = new byte[UdpFlowFraming.DatagramLength(quarter, payloadLength)];
        Assert.Equal(datagram.Length, UdpFlowFraming.EncodeDatagram(datagram, quarter, payload));

        Assert.True(UdpFlowFraming.TryDecodeDatagram(datagram, out var id, out var offset));
        Assert.Equal(quarter, id);
        Assert.Equal(UdpFlowFraming.VarintLength(quarter), offset);
        Assert.Equal(payload, datagram[offset..]);
    }

    [Fact]
    public void A_datagram_whose_id_is_cut_short_is_malformed_and_dropped_by_the_mux()
    {
        Assert.False(UdpFlowFraming.TryDecodeDatagram([], out _, out _));
        Assert.False(UdpFlowFraming.TryDecodeDatagram([0x80, 0x00], out _, out _));
        var mux = new UdpDatagramMux(() => 1200, _ => true);
        mux.Deliver([0x80, 0x00]);
        mux.Deliver([0x05, 1, 2, 3]);
        Assert.Equal(1, mux.MalformedDropped);
        Assert.Equal(1, mux.UnknownDropped);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(4000)]
    [InlineData(UdpFlowFraming.MaxPayloadLength)]
    public async Task Stream_records_round_trip_and_read_nothing_after_them(int length)
    {
        var payload = FlowTestSupport.RandomBytes(length, seed: length);
        using var stream = new MemoryStream();
        await UdpFlowFraming.WriteRecordAsync(stream, payload, Token);
        Assert.Equal(2 + length, stream.Length);
        Assert.Equal(length, BinaryPrimitives.ReadUInt16BigEndian(stream.GetBuffer()));
        await UdpFlowFraming.WriteCloseAsync(stream, new FlowReply(FlowStatus.Timeout, "idle for 60 s"), Token);
        stream.Position = 0;

        var buffer = new byte[UdpFlowFraming.MaxPayloadLength];
        var record = await UdpFlowFraming.ReadRecordAsync(stream, buffer, Token);
        Assert.Equal(UdpStreamRecordKind.Payload, record.Kind);
        Assert.Equal(payload, buffer[..record.Length]);
        var close = await UdpFlowFraming.ReadRecordAsync(stream, buffer, Token);
        Assert.Equal(UdpStreamRecordKind.Close, close.Kind);
        Assert.Equal(new FlowReply(FlowStatus.Timeout, "idle for 60 s"), close.Reason);
        Assert.Equal(UdpStreamRecordKind.End, (await UdpFlowFraming.ReadRecordAsync(stream, buffer, Token)).Kind);
    }

    [Theory]
    [InlineData(new byte[] { 0x01 }, "inside its 2-byte length")]
    [InlineData(new byte[] { 0x00, 0x05, 1, 2 }, "3 bytes short of its 5-byte payload")]
    [InlineData(new byte[] { 0xFF, 0xFF, 9, 0 }, "close record is malformed")]
    public async Task A_truncated_or_malformed_record_is_a_protocol_error(byte[] bytes, string reason)
    {
        using var stream = new MemoryStream(bytes);
        var e = await Assert.ThrowsAsync<FlowProtocolException>(() => UdpFlowFraming.ReadRecordAsync(stream, new byte[UdpFlowFraming.MaxPayloadLength], Token).AsTask());
        Assert.Contains(reason, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Payloads_longer_than_a_record_holds_are_refused_with_the_limit()
    {
        var e = Assert.Throws<ArgumentException>(() => UdpFlowFraming.EncodeRecord(new byte[70_000], new byte[UdpFlowFraming.MaxPayloadLength + 1]));
        Assert.Contains("at most 65534 bytes", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("5353=10.0.0.5:53/udp", 5353, "10.0.0.5", 53, FlowProtocol.Udp)]
    [InlineData("0=db.internal:53/UDP", 0, "db.internal", 53, FlowProtocol.Udp)]
    [InlineData("15432=db.internal:5432", 15432, "db.internal", 5432, FlowProtocol.Tcp)]
    [InlineData("15432=db.internal:5432/tcp", 15432, "db.internal", 5432, FlowProtocol.Tcp)]
    [InlineData("5353=[fd00::5]:53/udp", 5353, "fd00::5", 53, FlowProtocol.Udp)]
    public void Forward_specs_take_an_optional_protocol(string text, int local, string host, int port, FlowProtocol protocol)
        => Assert.Equal(new PortForwardSpec(local, host, port, protocol), PortForwardSpec.Parse(text));

    [Theory]
    [InlineData("5353=10.0.0.5:53/sctp", "'/sctp', which is not a protocol: end it with /tcp or /udp")]
    [InlineData("5353=10.0.0.5:53/", "'/', which is not a protocol")]
    [InlineData("5353=10.0.0.5/udp", "is not LOCALPORT=HOST:PORT[/tcp|/udp]")]
    [InlineData("x=10.0.0.5:53/udp", "is not LOCALPORT=HOST:PORT[/tcp|/udp]")]
    public void Bad_forward_specs_say_what_is_wrong(string text, string reason)
    {
        var e = Assert.Throws<ArgumentException>(() => PortForwardSpec.Parse(text));
        Assert.Contains(reason, e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("10.1.2.3", 53, new byte[] { 0, 0, 0, 1, 10, 1, 2, 3, 0, 53 })]
    [InlineData("fd00::1", 5353, new byte[] { 0, 0, 0, 4, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x14, 0xe9 })]
    [InlineData("db.internal", 53, new byte[] { 0, 0, 0, 3, 11, (byte)'d', (byte)'b', (byte)'.', (byte)'i', (byte)'n', (byte)'t', (byte)'e', (byte)'r', (byte)'n', (byte)'a', (byte)'l', 0, 53 })]
    public void Socks5_UDP_headers_format_and_parse_each_address_type(string host, int port, byte[] expected)
    {
        var buffer = new byte[Socks5UdpHeader.MaxLength + 3];
        var length = Socks5UdpHeader.Write(buffer, host, port);
        Assert.Equal(expected, buffer[..length]);
        Assert.Equal(length, Socks5UdpHeader.Length(host));

        byte[] datagram = [.. expected, 0xAA, 0xBB, 0xCC];
        Assert.True(Socks5UdpHeader.TryParse(datagram, out var parsedHost, out var parsedPort, out var headerLength, out var error), error);
        Assert.Equal(host, parsedHost);
        Assert.Equal(port, parsedPort);
        Assert.Equal(new byte[] { 0xAA, 0xBB, 0xCC }, datagram[headerLength..]);
    }

    [Theory]
    [InlineData(new byte[] { 0, 0, 1, 1, 10, 1, 2, 3, 0, 53, 0xAA }, "FRAG 1")]
    [InlineData(new byte[] { 0, 0, 0x81, 1, 10, 1, 2, 3, 0, 53, 0xAA }, "does not reassemble")]
    [InlineData(new byte[] { 0, 0, 0 }, "truncated")]
    [InlineData(new byte[] { 0, 0, 0, 1, 10, 1, 2 }, "truncated")]
    [InlineData(new byte[] { 0, 0, 0, 3, 0, 0, 53 }, "domain name is empty")]
    [InlineData(new byte[] { 0, 0, 0, 3, 5, (byte)'a', (byte)'b', 0, 53 }, "truncated")]
    [InlineData(new byte[] { 0, 0, 0, 2, 10, 1, 2, 3, 0, 53 }, "address type 2 is unknown")]
    [InlineData(new byte[] { 0, 0, 0, 1, 10, 1, 2, 3, 0, 0 }, "port 0 is out of range")]
    [InlineData(new byte[] { 0, 0, 0, 3, 3, (byte)'a', (byte)'/', (byte)'b', 0, 53 }, "is not a DNS name")]
    public void Fragmented_or_malformed_Socks5_UDP_headers_are_refused_with_the_reason(byte[] datagram, string reason)
    {
        Assert.False(Socks5UdpHeader.TryParse(datagram, out _, out _, out _, out var error));
        Assert.Contains(reason, error, StringComparison.Ordinal);
    }
}

using System.Buffers.Binary;
using System.Text;
using Ferry.Core.Flows;

namespace Ferry.UnitTests.Flows;

public sealed class FlowCodecTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(5);

    [Theory]
    [InlineData(FlowProtocol.Tcp, "db.corp.internal", 5432)]
    [InlineData(FlowProtocol.Tcp, "DB.Corp.Internal.", 1)]
    [InlineData(FlowProtocol.Udp, "10.1.2.3", 53)]
    [InlineData(FlowProtocol.Tcp, "fd00::1", 65535)]
    [InlineData(FlowProtocol.Tcp, "_sip._tcp.example.com", 5060)]
    [InlineData(FlowProtocol.Tcp, "::ffff:10.0.0.1", 22)]
    public async Task Header_round_trips_through_a_stream_and_reads_nothing_after_it(FlowProtocol protocol, string host, int port)
    {
        var header = new FlowHeader(protocol, host, port);
        using var stream = new MemoryStream();
        await header.WriteAsync(stream, TestContext.Current.CancellationToken);
        stream.Write([0xAA, 0xBB]);
        stream.Position = 0;

        var read = await FlowHeader.ReadAsync(stream, TestContext.Current.CancellationToken).AsTask().WaitAsync(Bound, TestContext.Current.CancellationToken);

        Assert.Equal(header, read);
        Assert.Equal(header.EncodedLength, stream.Position);
        Assert.True(FlowHeader.TryDecode(header.ToArray(), out var decoded, out var consumed, out var error), error);
        Assert.Equal(header, decoded);
        Assert.Equal(header.EncodedLength, consumed);
    }

    [Fact]
    public void Header_takes_a_255_byte_host_and_refuses_longer()
    {
        var label = new string('a', 63);
        var longest = string.Join('.', label, label, label, new string('b', 61));
        Assert.Equal(253, longest.Length);
        var header = new FlowHeader(FlowProtocol.Tcp, longest, 443);
        Assert.True(FlowHeader.TryDecode(header.ToArray(), out var decoded, out _, out var error), error);
        Assert.Equal(longest, decoded!.Host);

        Assert.Throws<ArgumentException>(() => new FlowHeader(FlowProtocol.Tcp, longest + ".cc.d", 443).ToArray());
    }

    [Theory]
    [InlineData(new byte[] { }, "truncated")]
    [InlineData(new byte[] { 1, 1 }, "truncated")]
    [InlineData(new byte[] { 2, 1, 1, (byte)'a', 0, 80 }, "version 2 is not supported")]
    [InlineData(new byte[] { 1, 9, 1, (byte)'a', 0, 80 }, "protocol 9 is unknown")]
    [InlineData(new byte[] { 1, 1, 0, 0, 80 }, "names no host")]
    [InlineData(new byte[] { 1, 1, 5, (byte)'a', (byte)'b' }, "truncated")]
    [InlineData(new byte[] { 1, 1, 1, (byte)'a', 0 }, "truncated")]
    [InlineData(new byte[] { 1, 1, 1, (byte)'a', 0, 0 }, "port 0 is out of range")]
    [InlineData(new byte[] { 1, 1, 3, (byte)'a', 0, (byte)'b', 0, 80 }, "byte 0x00")]
    [InlineData(new byte[] { 1, 1, 3, (byte)'a', 0xC3, (byte)'b', 0, 80 }, "byte 0xc3")]
    [InlineData(new byte[] { 1, 1, 4, (byte)'a', (byte)'/', (byte)'b', (byte)'c', 0, 80 }, "is not a DNS name")]
    public async Task Hostile_headers_throw_only_FlowProtocolException(byte[] bytes, string reason)
    {
        using var stream = new MemoryStream(bytes);
        var e = await Assert.ThrowsAsync<FlowProtocolException>(
            () => FlowHeader.ReadAsync(stream, TestContext.Current.CancellationToken).AsTask().WaitAsync(Bound, TestContext.Current.CancellationToken));
        Assert.Contains(reason, e.Message, StringComparison.Ordinal);
        Assert.False(FlowHeader.TryDecode(bytes, out _, out _, out var error));
        Assert.Contains(reason, error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("127.1")]
    [InlineData("0177.0.0.1")]
    [InlineData("1.2.3.4.")]
    [InlineData("256.1.1.1")]
    [InlineData("2130706433")]
    [InlineData("[::1]")]
    [InlineData("fe80::1%eth0")]
    [InlineData("a..b")]
    [InlineData("-a.b")]
    [InlineData("a b")]
    [InlineData("*.corp.internal")]
    [InlineData("")]
    public void Ambiguous_or_malformed_hosts_are_refused(string host)
    {
        Assert.False(FlowHeader.TryValidateHost(host, out var error));
        Assert.NotEmpty(error);
    }

    [Fact]
    public void Only_strict_literals_count_as_addresses()
    {
        Assert.True(FlowHeader.TryGetAddress("10.0.0.1", out _));
        Assert.True(FlowHeader.TryGetAddress("fd00::1", out _));
        Assert.False(FlowHeader.TryGetAddress("0x7f.1", out _));
        Assert.False(FlowHeader.TryGetAddress("127.1", out _));
        Assert.False(FlowHeader.TryGetAddress("db.internal", out _));
    }

    [Theory]
    [InlineData(FlowStatus.Ok, "")]
    [InlineData(FlowStatus.Denied, "device/dv_1 is not granted resource 'db'")]
    [InlineData(FlowStatus.ProtocolError, "ünïcödé ✓")]
    public async Task Reply_round_trips(FlowStatus status, string message)
    {
        var reply = new FlowReply(status, message);
        using var stream = new MemoryStream();
        await reply.WriteAsync(stream, TestContext.Current.CancellationToken);
        stream.Write([0xCC]);
        stream.Position = 0;

        var read = await FlowReply.ReadAsync(stream, TestContext.Current.CancellationToken).AsTask().WaitAsync(Bound, TestContext.Current.CancellationToken);

        Assert.Equal(reply, read);
        Assert.Equal(stream.Length - 1, stream.Position);
    }

    [Fact]
    public void Long_reply_messages_are_cut_to_1_KiB_at_a_character_boundary()
    {
        var reply = new FlowReply(FlowStatus.Denied, new string('x', 1023) + "✓✓✓");
        var bytes = reply.ToArray();
        Assert.True(FlowReply.TryDecode(bytes, out var decoded, out _, out var error), error);
        Assert.True(Encoding.UTF8.GetByteCount(decoded!.Message) <= FlowReply.MaxMessageBytes);
        Assert.Equal(new string('x', 1023), decoded.Message);
    }

    [Theory]
    [InlineData(new byte[] { 1, 0, 0 }, "truncated")]
    [InlineData(new byte[] { 3, 0, 0, 0 }, "version 3 is not supported")]
    [InlineData(new byte[] { 1, 42, 0, 0 }, "status 42 is unknown")]
    [InlineData(new byte[] { 1, 1, 0x04, 0x01 }, "1025 bytes")]
    [InlineData(new byte[] { 1, 1, 0, 5, (byte)'a' }, "truncated")]
    public async Task Hostile_replies_throw_only_FlowProtocolException(byte[] bytes, string reason)
    {
        using var stream = new MemoryStream(bytes);
        var e = await Assert.ThrowsAsync<FlowProtocolException>(
            () => FlowReply.ReadAsync(stream, TestContext.Current.CancellationToken).AsTask().WaitAsync(Bound, TestContext.Current.CancellationToken));
        Assert.Contains(reason, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Reply_messages_lose_control_characters()
    {
        byte[] bytes = [1, 1, 0, 5, (byte)'a', (byte)'\n', (byte)'b', 0x1B, (byte)'c'];
        Assert.True(FlowReply.TryDecode(bytes, out var reply, out _, out var error), error);
        Assert.Equal("a?b?c", reply!.Message);
    }

    [Theory]
    [InlineData(FlowStatus.Ok, 0x00, 200)]
    [InlineData(FlowStatus.Denied, 0x02, 403)]
    [InlineData(FlowStatus.NoSuchResource, 0x02, 403)]
    [InlineData(FlowStatus.NameNotFound, 0x04, 502)]
    [InlineData(FlowStatus.Unreachable, 0x04, 502)]
    [InlineData(FlowStatus.Refused, 0x05, 502)]
    [InlineData(FlowStatus.Timeout, 0x06, 504)]
    [InlineData(FlowStatus.ProtocolError, 0x01, 502)]
    public void Statuses_map_to_SOCKS5_codes_and_HTTP_statuses(FlowStatus status, byte socks, int http)
    {
        Assert.Equal(socks, FlowReply.ToSocks5ReplyCode(status));
        Assert.Equal(http, FlowReply.ToHttpStatusCode(status));
        Assert.NotEmpty(FlowReply.ToHttpReasonPhrase(status));
    }

    [Fact]
    public async Task Fuzzed_headers_and_replies_decode_or_fail_cleanly()
    {
        var seed = Environment.TickCount;
        TestContext.Current.TestOutputHelper?.WriteLine($"fuzz seed {seed}");
        var random = new Random(seed);
        var valid = new FlowHeader(FlowProtocol.Tcp, "app.corp.internal", 8443).ToArray();
        var validReply = new FlowReply(FlowStatus.Refused, "connection refused: 10.0.0.5:8443").ToArray();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(3);
        for (var i = 0; i < 20_000 && DateTime.UtcNow < deadline; i++)
        {
            var bytes = Mutate(random, random.Next(2) == 0 ? valid : validReply);
            try
            {
                if (FlowHeader.TryDecode(bytes, out var header, out var consumed, out _))
                {
                    Assert.True(consumed <= bytes.Length);
                    Assert.True(FlowHeader.TryValidate(header!.Protocol, header.Host, header.Port, out var why), why);
                }
                FlowReply.TryDecode(bytes, out _, out _, out _);
                if (i % 50 == 0)
                {
                    using var stream = new MemoryStream(bytes);
                    try
                    {
                        await FlowHeader.ReadAsync(stream, TestContext.Current.CancellationToken);
                    }
                    catch (FlowProtocolException)
                    {
                    }
                }
            }
            catch (Exception e) when (e is not FlowProtocolException)
            {
                Assert.Fail($"seed {seed}, iteration {i}, input {Convert.ToHexString(bytes)}: {e}");
            }
        }
    }

    private static byte[] Mutate(Random random, byte[] valid)
    {
        switch (random.Next(4))
        {
            case 0:
                var random1 = new byte[random.Next(0, 300)];
                random.NextBytes(random1);
                return random1;
            case 1:
                return valid[..random.Next(valid.Length + 1)];
            case 2:
                var flipped = (byte[])valid.Clone();
                for (var n = random.Next(1, 4); n > 0; n--)
                {
                    flipped[random.Next(flipped.Length)] = (byte)random.Next(256);
                }
                return flipped;
            default:
                var lengthy = (byte[])valid.Clone();
                if (lengthy.Length > 4)
                {
                    BinaryPrimitives.WriteUInt16BigEndian(lengthy.AsSpan(2), (ushort)random.Next(65536));
                }
                return lengthy;
        }
    }
}

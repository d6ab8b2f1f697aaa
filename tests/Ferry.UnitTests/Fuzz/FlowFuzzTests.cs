using System.Net;
using Ferry.Client.Access;
using Ferry.Core.Flows;

namespace Ferry.UnitTests.Fuzz;

/// <summary>
/// What a connector reads at the start of every flow stream (<see cref="FlowHeader"/>), what a client reads back
/// (<see cref="FlowReply"/>), the records and datagrams of UDP flows, and the SOCKS5 UDP header of the client's relay socket.
/// The stream readers get their bytes in random-sized pieces, as QUIC delivers them.
/// </summary>
public sealed class FlowFuzzTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public void Flow_headers_decode_the_same_from_a_span_and_a_stream_or_fail_with_a_protocol_error()
    {
        var seed = Fuzzer.Seed(0x710E0001);
        var chunks = new Random(seed + 1);
        Fuzzer.Run("flow-header", seed, Fuzzer.Iterations(15_000), Fuzzer.Corpus("flow-header"), input =>
        {
            var decoded = FlowHeader.TryDecode(input, out var header, out var consumed, out var error);
            FlowHeader? read = null;
            string? failure = null;
            var stream = new ChunkedStream(input, chunks);
            try
            {
                read = FlowHeader.ReadAsync(stream, Ct).AsTask().GetAwaiter().GetResult();
            }
            catch (FlowProtocolException e)
            {
                failure = e.Message;
            }
            if (!decoded)
            {
                Assert.Null(header);
                Assert.NotEmpty(error);
                Assert.NotNull(failure);
                return false;
            }
            Assert.Null(failure);
            Assert.Equal(header, read);
            Assert.Equal(consumed, stream.Position);
            // Canonical: a decoded header encodes back to exactly the bytes it came from.
            Assert.Equal(input[..consumed], header!.ToArray());
            return true;
        });
    }

    [Fact]
    public void Generated_flow_headers_round_trip()
    {
        var seed = Fuzzer.Seed(0x710E0002);
        var random = new Random(seed);
        var iterations = Fuzzer.Iterations(20_000);
        Fuzzer.Log($"flow-header round trip: seed {seed}, {iterations} headers");
        var buffer = new byte[FlowHeader.MaxEncodedLength];
        for (var i = 0; i < iterations; i++)
        {
            var header = new FlowHeader(random.Next(2) == 0 ? FlowProtocol.Tcp : FlowProtocol.Udp, Host(random), random.Next(1, 65536));
            Assert.True(FlowHeader.TryValidate(header.Protocol, header.Host, header.Port, out var error), error);
            var length = header.Encode(buffer);
            Assert.True(FlowHeader.TryDecode(buffer.AsSpan(0, length), out var decoded, out var consumed, out error), error);
            Assert.Equal((header, length), (decoded, consumed));
        }
    }

    [Fact]
    public void Flow_replies_decode_the_same_from_a_span_and_a_stream_and_carry_no_control_characters()
    {
        var seed = Fuzzer.Seed(0x710E0003);
        var chunks = new Random(seed + 1);
        Fuzzer.Run("flow-reply", seed, Fuzzer.Iterations(20_000), Fuzzer.Corpus("flow-reply"), input =>
        {
            var decoded = FlowReply.TryDecode(input, out var reply, out var consumed, out var error);
            FlowReply? read = null;
            var stream = new ChunkedStream(input, chunks);
            try
            {
                read = FlowReply.ReadAsync(stream, Ct).AsTask().GetAwaiter().GetResult();
            }
            catch (FlowProtocolException)
            {
                Assert.False(decoded, error);
                return false;
            }
            Assert.True(decoded, error);
            Assert.Equal(reply, read);
            Assert.Equal(consumed, stream.Position);
            Assert.DoesNotContain(reply!.Message, char.IsControl);
            Assert.True(Enum.IsDefined(reply.Status));
            // What the client forwards (HTTP status, SOCKS5 code) exists for every status a peer can send.
            _ = FlowReply.ToHttpReasonPhrase(reply.Status);
            _ = FlowReply.ToSocks5ReplyCode(reply.Status);
            Assert.InRange(reply.ToArray().Length, 4, FlowReply.MaxEncodedLength);
            return true;
        });
    }

    [Fact]
    public void Generated_flow_replies_round_trip()
    {
        var seed = Fuzzer.Seed(0x710E0004);
        var random = new Random(seed);
        var iterations = Fuzzer.Iterations(20_000);
        Fuzzer.Log($"flow-reply round trip: seed {seed}, {iterations} replies");
        var statuses = Enum.GetValues<FlowStatus>();
        for (var i = 0; i < iterations; i++)
        {
            // Printable text of any script, up to twice what fits: longer messages are cut at a character boundary.
            var chars = new char[random.Next(0, random.Next(2) == 0 ? 40 : 2 * FlowReply.MaxMessageBytes)];
            for (var c = 0; c < chars.Length; c++)
            {
                chars[c] = (char)random.Next(0x20, 0xD7FF);
            }
            var message = new string(chars.Select(c => char.IsControl(c) ? ' ' : c).ToArray());
            var reply = new FlowReply(statuses[random.Next(statuses.Length)], message);
            var bytes = reply.ToArray();
            Assert.True(FlowReply.TryDecode(bytes, out var decoded, out var consumed, out var error), error);
            Assert.Equal(bytes.Length, consumed);
            Assert.Equal(reply.Status, decoded!.Status);
            Assert.StartsWith(decoded.Message, message, StringComparison.Ordinal);
            Assert.True(decoded.Message == message || bytes.Length > FlowReply.MaxEncodedLength - 4, "only a message too long to fit is cut");
        }
    }

    [Fact]
    public void Udp_flow_streams_yield_records_or_a_protocol_error()
    {
        var seed = Fuzzer.Seed(0x710E0005);
        var chunks = new Random(seed + 1);
        var buffer = new byte[UdpFlowFraming.MaxPayloadLength];
        Fuzzer.Run("udp-record", seed, Fuzzer.Iterations(10_000), Fuzzer.Corpus("udp-record"), input =>
        {
            var stream = new ChunkedStream(input, chunks);
            var records = 0;
            try
            {
                // Every record consumes at least its 2-byte prefix, so the input runs out; the bound only turns a regression into a failure.
                for (var guard = 0; guard <= input.Length; guard++)
                {
                    var record = UdpFlowFraming.ReadRecordAsync(stream, buffer, Ct).AsTask().GetAwaiter().GetResult();
                    switch (record.Kind)
                    {
                        case UdpStreamRecordKind.End:
                            Assert.Equal(input.Length, stream.Position);
                            return records > 0;
                        case UdpStreamRecordKind.Close:
                            Assert.NotNull(record.Reason);
                            Assert.DoesNotContain(record.Reason.Message, char.IsControl);
                            break;
                        default:
                            Assert.InRange(record.Length, 0, UdpFlowFraming.MaxPayloadLength);
                            break;
                    }
                    records++;
                }
                throw new InvalidOperationException("the record reader did not finish");
            }
            catch (FlowProtocolException)
            {
                return false;
            }
        });
    }

    [Fact]
    public void Udp_datagrams_name_a_flow_or_are_dropped_and_varints_round_trip()
    {
        var seed = Fuzzer.Seed(0x710E0006);
        Fuzzer.Run("udp-datagram", seed, Fuzzer.Iterations(20_000), Fuzzer.Corpus("udp-datagram"), input =>
        {
            if (!UdpFlowFraming.TryDecodeDatagram(input, out var id, out var offset))
            {
                return false;
            }
            Assert.InRange(id, 0, UdpFlowFraming.MaxVarint);
            Assert.InRange(offset, 1, Math.Min(8, input.Length));
            Assert.InRange(input.Length - offset, 0, UdpFlowFraming.MaxPayloadLength);
            // Re-encoding takes no more bytes than the peer used (it may have used a longer form than needed).
            Assert.True(UdpFlowFraming.VarintLength(id) <= offset);
            return true;
        });

        var random = new Random(seed);
        var buffer = new byte[UdpFlowFraming.MaxVarintLength];
        for (var i = 0; i < Fuzzer.Iterations(20_000); i++)
        {
            var value = random.Next(5) switch
            {
                0 => random.Next(64),
                1 => random.Next(16384),
                2 => random.Next(1 << 30),
                3 => random.NextInt64(0, UdpFlowFraming.MaxVarint + 1),
                _ => new[] { 0L, 63, 64, 16383, 16384, (1L << 30) - 1, 1L << 30, UdpFlowFraming.MaxVarint }[random.Next(8)],
            };
            var length = UdpFlowFraming.WriteVarint(buffer, value);
            Assert.True(UdpFlowFraming.TryReadVarint(buffer.AsSpan(0, length), out var read, out var readLength));
            Assert.Equal((value, length), (read, readLength));
            Assert.False(UdpFlowFraming.TryReadVarint(buffer.AsSpan(0, length - 1), out _, out _));
        }
    }

    [Fact]
    public void Socks5_udp_headers_parse_to_a_valid_destination_that_round_trips()
    {
        var seed = Fuzzer.Seed(0x710E0007);
        var buffer = new byte[Socks5UdpHeader.MaxLength];
        Fuzzer.Run("socks5-udp", seed, Fuzzer.Iterations(15_000), Fuzzer.Corpus("socks5-udp"), input =>
        {
            if (!Socks5UdpHeader.TryParse(input, out var host, out var port, out var headerLength, out var error))
            {
                Assert.NotEmpty(error);
                return false;
            }
            Assert.InRange(headerLength, 8, Math.Min(input.Length, Socks5UdpHeader.MaxLength));
            Assert.True(FlowHeader.TryValidate(FlowProtocol.Udp, host, port, out error), error);
            var length = Socks5UdpHeader.Write(buffer, host, port);
            Assert.True(Socks5UdpHeader.TryParse(buffer.AsSpan(0, length), out var again, out var againPort, out _, out error), error);
            Assert.Equal(port, againPort);
            Assert.True(again == host || (FlowHeader.TryGetAddress(host, out var a) && FlowHeader.TryGetAddress(again, out var b) && a.Equals(b)), $"{host} came back as {again}");
            return true;
        });
    }

    /// <summary>DNS names, IPv4 and IPv6 literals of every length a header can carry.</summary>
    private static string Host(Random random)
    {
        switch (random.Next(4))
        {
            case 0:
                return new IPAddress(random.NextInt64(0, 1L << 32) & 0xFFFF_FFFF).ToString();
            case 1:
            {
                var bytes = new byte[16];
                random.NextBytes(bytes);
                return new IPAddress(bytes).ToString();
            }
            default:
            {
                const string Letters = "abcdefghijklmnopqrstuvwxyz0123456789-_";
                var labels = new List<string>();
                var total = 0;
                var limit = random.Next(2) == 0 ? 30 : 253;
                while (true)
                {
                    var length = random.Next(1, 64);
                    if (total + length + (labels.Count > 0 ? 1 : 0) > limit)
                    {
                        break;
                    }
                    var label = new char[length];
                    for (var i = 0; i < length; i++)
                    {
                        label[i] = Letters[random.Next(i == 0 || i == length - 1 ? 36 : Letters.Length)];
                    }
                    labels.Add(new string(label));
                    total += length + (labels.Count > 1 ? 1 : 0);
                }
                if (labels.Count == 0)
                {
                    labels.Add("a");
                }
                // A name that is all digits and dots would be read as an (invalid) IPv4 address.
                if (labels.All(l => l.All(char.IsAsciiDigit)))
                {
                    labels[0] = "x" + labels[0][1..];
                }
                return string.Join('.', labels) + (random.Next(8) == 0 && total < 253 ? "." : "");
            }
        }
    }

    /// <summary>A read-only stream that hands its bytes out in random-sized pieces, as a QUIC stream does.</summary>
    private sealed class ChunkedStream(byte[] data, Random random) : Stream
    {
        private int _position;

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => data.Length;

        public override long Position
        {
            get => _position;
            set => throw new NotSupportedException();
        }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            var count = Math.Min(Math.Min(buffer.Length, data.Length - _position), 1 + random.Next(16));
            data.AsSpan(_position, count).CopyTo(buffer);
            _position += count;
            return count;
        }

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => ValueTask.FromResult(Read(buffer.Span));

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => Task.FromResult(Read(buffer.AsSpan(offset, count)));

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}

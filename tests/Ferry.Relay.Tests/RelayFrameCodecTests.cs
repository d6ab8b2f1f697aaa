using System.Buffers;
using System.Diagnostics;
using Ferry.Relay.Tests.Support;

namespace Ferry.Relay.Tests;

public sealed class RelayFrameCodecTests
{
    [Fact]
    public void EveryFrameTypeRoundTrips()
    {
        var bytes = new List<byte>();
        void Add(Func<byte[], int> write, int length)
        {
            var frame = new byte[length];
            Assert.Equal(length, write(frame));
            bytes.AddRange(frame);
        }

        var packet = Enumerable.Range(0, RelayFrameCodec.MaxPacketLength).Select(i => (byte)i).ToArray();
        var notAfter = DateTimeOffset.FromUnixTimeSeconds(1_900_000_000);
        Add(f => RelayFrameCodec.WriteBind(f, 7, "ticket-text"), RelayFrameCodec.BindLength("ticket-text"));
        Add(f => RelayFrameCodec.WriteBindOk(f, 7, 42, present: true, notAfter, "device/dv_1"), RelayFrameCodec.BindOkLength("device/dv_1"));
        Add(f => RelayFrameCodec.WriteBindRefused(f, 8, RelayRefusal.TicketExpired, "too late"), RelayFrameCodec.BindRefusedLength("too late"));
        Add(f => RelayFrameCodec.WriteData(f, 65535, packet), RelayFrameCodec.DataLength(packet.Length));
        Add(f => RelayFrameCodec.WritePing(f, RelayFrameType.Ping, ulong.MaxValue), RelayFrameCodec.PingLength);
        Add(f => RelayFrameCodec.WritePing(f, RelayFrameType.Pong, 1), RelayFrameCodec.PingLength);
        Add(f => RelayFrameCodec.WriteError(f, RelayRefusal.ProtocolError, "bad"), RelayFrameCodec.ErrorLength("bad"));
        Add(f => RelayFrameCodec.WriteUnbind(f, 3), RelayFrameCodec.UnbindLength);
        Add(f => RelayFrameCodec.WritePeerState(f, 9, present: false), RelayFrameCodec.PeerStateLength);

        // Split into many small segments: frames must parse across segment boundaries.
        var sequence = Segments.Split(bytes.ToArray(), new Random(1), maxSegment: 1000);
        var frames = new List<RelayFrame>();
        while (RelayFrameCodec.TryRead(ref sequence, out var frame, out var error) == RelayFrameStatus.Frame)
        {
            Assert.Empty(error);
            frames.Add(frame);
        }

        Assert.True(sequence.IsEmpty);
        Assert.Equal(9, frames.Count);
        Assert.True(RelayFrameCodec.TryReadBind(frames[0].Payload, out var id, out var ticket));
        Assert.Equal((7u, "ticket-text"), (id, ticket));
        Assert.True(RelayFrameCodec.TryReadBindOk(frames[1].Payload, out id, out var channel, out var present, out var expiry, out var remote));
        Assert.Equal((7u, (ushort)42, true, notAfter, "device/dv_1"), (id, channel, present, expiry, remote));
        Assert.True(RelayFrameCodec.TryReadBindRefused(frames[2].Payload, out id, out var reason, out var message));
        Assert.Equal((8u, RelayRefusal.TicketExpired, "too late"), (id, reason, message));
        Assert.True(RelayFrameCodec.TryReadData(frames[3].Payload, out channel, out var data));
        Assert.Equal((ushort)65535, channel);
        Assert.Equal(packet, data.ToArray());
        Assert.True(RelayFrameCodec.TryReadPing(frames[4].Payload, out var ping));
        Assert.Equal(ulong.MaxValue, ping);
        Assert.Equal(RelayFrameType.Pong, frames[5].Type);
        Assert.True(RelayFrameCodec.TryReadError(frames[6].Payload, out reason, out message));
        Assert.Equal((RelayRefusal.ProtocolError, "bad"), (reason, message));
        Assert.True(RelayFrameCodec.TryReadUnbind(frames[7].Payload, out channel));
        Assert.Equal((ushort)3, channel);
        Assert.True(RelayFrameCodec.TryReadPeerState(frames[8].Payload, out channel, out present));
        Assert.Equal(((ushort)9, false), (channel, present));
    }

    [Fact]
    public void PartialFramesAskForMoreBytes()
    {
        var frame = new byte[RelayFrameCodec.DataLength(100)];
        RelayFrameCodec.WriteData(frame, 1, new byte[100]);
        for (var cut = 0; cut < frame.Length; cut++)
        {
            var sequence = new ReadOnlySequence<byte>(frame, 0, cut);
            Assert.Equal(RelayFrameStatus.Incomplete, RelayFrameCodec.TryRead(ref sequence, out _, out _));
            Assert.Equal(cut, sequence.Length);
        }
    }

    [Theory]
    [InlineData(new byte[] { 0x00, 0, 0, 1 }, "unknown frame type 0x00")]
    [InlineData(new byte[] { 0x0a }, "unknown frame type 0x0a")]
    [InlineData(new byte[] { 0xff, 0, 0 }, "unknown frame type 0xff")]
    [InlineData(new byte[] { 0x04, 0xff, 0xff, 0xff }, "exceeds the limit")]
    [InlineData(new byte[] { 0x04, 0x01, 0x00, 0x02 }, "exceeds the limit")]
    [InlineData(new byte[] { 0x04, 0x00, 0x00, 0x02 }, "outside 3..")]
    [InlineData(new byte[] { 0x05, 0x00, 0x00, 0x07 }, "outside 8..8")]
    [InlineData(new byte[] { 0x01, 0x00, 0x10, 0x00 }, "outside 5..")]
    public void HostileHeadersAreRejectedBeforeAnyPayloadArrives(byte[] header, string expected)
    {
        var sequence = new ReadOnlySequence<byte>(header);
        Assert.Equal(RelayFrameStatus.Invalid, RelayFrameCodec.TryRead(ref sequence, out _, out var error));
        Assert.Contains(expected, error, StringComparison.Ordinal);
    }

    [Fact]
    public void DecodersRefusePayloadsThatDoNotFitTheirType()
    {
        Assert.False(RelayFrameCodec.TryReadData(new ReadOnlySequence<byte>([0, 0, 1]), out _, out _));
        Assert.False(RelayFrameCodec.TryReadUnbind(new ReadOnlySequence<byte>([0, 0]), out _));
        Assert.False(RelayFrameCodec.TryReadBindOk(new ReadOnlySequence<byte>(new byte[16]), out _, out _, out _, out _, out _));
        Assert.False(RelayFrameCodec.TryReadPeerState(new ReadOnlySequence<byte>([0, 1, 2]), out _, out _));
        Assert.False(RelayFrameCodec.TryReadPing(new ReadOnlySequence<byte>(new byte[7]), out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => RelayFrameCodec.WriteData(new byte[70_000], 1, new byte[65_536]));
        Assert.Throws<ArgumentOutOfRangeException>(() => RelayFrameCodec.WriteData(new byte[10], 1, ReadOnlySpan<byte>.Empty));
    }

    [Fact]
    public void FuzzedInputNeverThrowsAndNeverOverreads()
    {
        var seed = Fuzz.Seed();
        Bounded.Log($"fuzz seed {seed} (replay with FERRY_FUZZ_SEED={seed})");
        var random = new Random(seed);
        var valid = Samples();
        var watch = Stopwatch.StartNew();
        var frames = 0;
        var invalid = 0;
        // FERRY_FUZZ_ITERATIONS asks for a long run (docs/reliability.md): then the count rules, not the CI time budget.
        var requested = int.TryParse(Environment.GetEnvironmentVariable("FERRY_FUZZ_ITERATIONS"), System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var n) && n > 0 ? n : (int?)null;
        var budget = requested is null ? TimeSpan.FromSeconds(5) : TimeSpan.MaxValue;
        for (var round = 0; round < (requested ?? 50_000) && watch.Elapsed < budget; round++)
        {
            byte[] input;
            if (random.Next(3) == 0)
            {
                input = new byte[random.Next(0, 300)];
                random.NextBytes(input);
            }
            else
            {
                input = [.. Enumerable.Range(0, random.Next(1, 5)).SelectMany(_ => valid[random.Next(valid.Length)])];
                for (var m = random.Next(0, 4); m > 0 && input.Length > 0; m--)
                {
                    input[random.Next(input.Length)] = (byte)random.Next(256);
                }

                if (random.Next(4) == 0)
                {
                    input = input[..random.Next(input.Length + 1)];
                }
            }

            var sequence = Segments.Split(input, random, maxSegment: 64);
            var total = sequence.Length;
            long consumed = 0;
            for (var guard = 0; guard < 1_000; guard++)
            {
                var before = sequence.Length;
                var status = RelayFrameCodec.TryRead(ref sequence, out var frame, out var error);
                if (status != RelayFrameStatus.Frame)
                {
                    Assert.Equal(before, sequence.Length);
                    if (status == RelayFrameStatus.Invalid)
                    {
                        Assert.NotEmpty(error);
                        invalid++;
                    }

                    break;
                }

                frames++;
                consumed += before - sequence.Length;
                Assert.Equal(RelayFrameCodec.HeaderLength + frame.Payload.Length, before - sequence.Length);
                Assert.InRange(frame.Payload.Length, 0, RelayFrameCodec.MaxPayloadLength);
                DecodeAll(frame);
            }

            Assert.Equal(total, consumed + sequence.Length);
        }

        Bounded.Log($"{frames} frames parsed, {invalid} inputs rejected in {watch.ElapsedMilliseconds} ms");
        Assert.True(frames > 0 && invalid > 0);
    }

    private static void DecodeAll(RelayFrame frame)
    {
        // Whatever the type byte says, every decoder must cope with every payload.
        var payload = frame.Payload;
        RelayFrameCodec.TryReadBind(payload, out _, out _);
        RelayFrameCodec.TryReadBindOk(payload, out _, out _, out _, out _, out _);
        RelayFrameCodec.TryReadPeerState(payload, out _, out _);
        RelayFrameCodec.TryReadBindRefused(payload, out _, out _, out _);
        RelayFrameCodec.TryReadData(payload, out _, out _);
        RelayFrameCodec.TryReadPing(payload, out _);
        RelayFrameCodec.TryReadError(payload, out _, out _);
        RelayFrameCodec.TryReadUnbind(payload, out _);
    }

    internal static byte[][] Samples()
    {
        byte[] Make(Func<byte[], int> write, int length)
        {
            var frame = new byte[length];
            write(frame);
            return frame;
        }

        return
        [
            Make(f => RelayFrameCodec.WriteBind(f, 1, "AQIDBAUGBwgJ"), RelayFrameCodec.BindLength("AQIDBAUGBwgJ")),
            Make(f => RelayFrameCodec.WriteBindOk(f, 1, 1, present: false, DateTimeOffset.UnixEpoch, "device/x"), RelayFrameCodec.BindOkLength("device/x")),
            Make(f => RelayFrameCodec.WritePeerState(f, 1, present: true), RelayFrameCodec.PeerStateLength),
            Make(f => RelayFrameCodec.WriteBindRefused(f, 1, RelayRefusal.TicketMalformed, "no"), RelayFrameCodec.BindRefusedLength("no")),
            Make(f => RelayFrameCodec.WriteData(f, 1, new byte[] { 1, 2, 3 }), RelayFrameCodec.DataLength(3)),
            Make(f => RelayFrameCodec.WriteData(f, 2, new byte[1200]), RelayFrameCodec.DataLength(1200)),
            Make(f => RelayFrameCodec.WritePing(f, RelayFrameType.Ping, 5), RelayFrameCodec.PingLength),
            Make(f => RelayFrameCodec.WritePing(f, RelayFrameType.Pong, 5), RelayFrameCodec.PingLength),
            Make(f => RelayFrameCodec.WriteError(f, RelayRefusal.ProtocolError, "x"), RelayFrameCodec.ErrorLength("x")),
            Make(f => RelayFrameCodec.WriteUnbind(f, 1), RelayFrameCodec.UnbindLength),
        ];
    }
}

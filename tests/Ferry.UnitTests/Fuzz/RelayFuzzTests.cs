using System.Buffers;
using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text;
using Ferry.Relay;
using Ferry.Relay.Tests.Support;
using Microsoft.Extensions.Time.Testing;

namespace Ferry.UnitTests.Fuzz;

/// <summary>Relay frames as the relay and the links read them off TLS, and relay tickets as relays verify them.</summary>
public sealed class RelayFuzzTests : IDisposable
{
    private const string Presenter = "device/dv_1";
    private readonly ECDsa _ca = ECDsa.Create(ECCurve.NamedCurves.nistP256);
    private readonly FakeTimeProvider _clock = new(DateTimeOffset.FromUnixTimeSeconds(1_800_000_000));

    public void Dispose() => _ca.Dispose();

    [Fact]
    public void Frames_split_anywhere_parse_or_are_refused_and_every_decoder_copes()
    {
        var seed = Fuzzer.Seed(0x4E1A0001);
        var split = new Random(seed + 1);
        Fuzzer.Run("relay-frame", seed, Fuzzer.Iterations(8_000), Fuzzer.Corpus("relay-frame"), input =>
        {
            // Building the segments is the test's cost, not the reader's.
            var sequence = Segments.Split(input, split, maxSegment: 1 + split.Next(64));
            return () => Read(input, sequence);
        });
    }

    private static bool Read(byte[] input, ReadOnlySequence<byte> sequence)
    {
        {
            var total = sequence.Length;
            long consumed = 0;
            var frames = 0;
            // Each frame consumes at least its header, so this loop ends; the guard only makes a regression fail instead of spin.
            for (var guard = 0; guard <= input.Length; guard++)
            {
                var before = sequence.Length;
                var status = RelayFrameCodec.TryRead(ref sequence, out var frame, out var error);
                if (status != RelayFrameStatus.Frame)
                {
                    Assert.Equal(before, sequence.Length);
                    Assert.True(status != RelayFrameStatus.Invalid || error.Length > 0);
                    Assert.Equal(total, consumed + sequence.Length);
                    return frames > 0;
                }
                frames++;
                consumed += before - sequence.Length;
                Assert.Equal(RelayFrameCodec.HeaderLength + frame.Payload.Length, before - sequence.Length);
                var (min, max) = RelayFrameCodec.PayloadBounds(frame.Type);
                Assert.InRange(frame.Payload.Length, min, max);
                DecodeAll(frame.Payload);
            }
            throw new InvalidOperationException("the frame reader did not finish");
        }
    }

    [Fact]
    public void Generated_frames_round_trip()
    {
        var seed = Fuzzer.Seed(0x4E1A0002);
        var random = new Random(seed);
        var iterations = Fuzzer.Iterations(20_000) / 10;
        Fuzzer.Log($"relay-frame round trip: seed {seed}, {iterations} frames of each kind");
        for (var i = 0; i < iterations; i++)
        {
            var id = (uint)random.NextInt64(0, 1L << 32);
            var channel = (ushort)random.Next(1, 65536);
            var packet = new byte[random.Next(1, random.Next(2) == 0 ? 64 : RelayFrameCodec.MaxPacketLength + 1)];
            random.NextBytes(packet);
            var ticket = Ascii(random, 1, RelayTicket.MaxTextLength);
            var peer = $"device/dv_{Ascii(random, 1, 20).Replace('/', '_')}";
            var message = new string((char)random.Next(0x20, 0xD7FF), random.Next(0, 40));
            var notAfter = DateTimeOffset.FromUnixTimeSeconds(random.NextInt64(0, DateTimeOffset.MaxValue.ToUnixTimeSeconds() + 1));
            var reason = (RelayRefusal)random.Next(0, 256);

            var data = Frame(f => RelayFrameCodec.WriteData(f, channel, packet), RelayFrameCodec.DataLength(packet.Length));
            Assert.True(RelayFrameCodec.TryReadData(data.Payload, out var readChannel, out var readPacket));
            Assert.Equal(channel, readChannel);
            Assert.True(readPacket.ToArray().AsSpan().SequenceEqual(packet));

            var bind = Frame(f => RelayFrameCodec.WriteBind(f, id, ticket), RelayFrameCodec.BindLength(ticket));
            Assert.True(RelayFrameCodec.TryReadBind(bind.Payload, out var readId, out var readTicket));
            Assert.Equal((id, ticket), (readId, readTicket));

            if (Ferry.Core.Security.PeerIdentity.IsValid(peer))
            {
                var ok = Frame(f => RelayFrameCodec.WriteBindOk(f, id, channel, present: true, notAfter, peer), RelayFrameCodec.BindOkLength(peer));
                Assert.True(RelayFrameCodec.TryReadBindOk(ok.Payload, out readId, out readChannel, out var present, out var readNotAfter, out var readPeer));
                Assert.Equal((id, channel, true, notAfter, peer), (readId, readChannel, present, readNotAfter, readPeer));
            }

            var refused = Frame(f => RelayFrameCodec.WriteBindRefused(f, id, reason, message), RelayFrameCodec.BindRefusedLength(message));
            Assert.True(RelayFrameCodec.TryReadBindRefused(refused.Payload, out readId, out var readReason, out var readMessage));
            Assert.Equal((id, reason, message), (readId, readReason, readMessage));

            var value = (ulong)random.NextInt64() ^ ((ulong)random.Next() << 40);
            var ping = Frame(f => RelayFrameCodec.WritePing(f, RelayFrameType.Ping, value), RelayFrameCodec.PingLength);
            Assert.True(RelayFrameCodec.TryReadPing(ping.Payload, out var readValue));
            Assert.Equal(value, readValue);
        }
    }

    [Fact]
    public void Tickets_never_verify_unless_issued_and_never_throw()
    {
        var issued = new[]
        {
            RelayTicket.Issue(_ca, Presenter, "connector/cn_1", _clock.GetUtcNow().AddMinutes(5)),
            RelayTicket.Issue(_ca, "connector/cn_0123456789abcdef", Presenter, _clock.GetUtcNow().AddHours(1)),
            RelayTicket.Issue(_ca, "device/dv_other", "connector/cn_1", _clock.GetUtcNow().AddMinutes(5)),
        };
        var texts = issued.Select(t => t.Text).ToHashSet(StringComparer.Ordinal);
        byte[][] seeds = [.. Fuzzer.Corpus("relay-ticket"), .. issued.Select(t => Encoding.ASCII.GetBytes(t.Text))];
        var seed = Fuzzer.Seed(0x4E1A0003);
        Assert.All(issued.Take(2), t => Assert.True(Verify(t.Text, texts)));
        Fuzzer.Run("relay-ticket", seed, Fuzzer.Iterations(10_000), seeds, input => Verify(Encoding.Latin1.GetString(input), texts), (random, all) =>
        {
            // Half the time the mutation happens on the decoded bytes, so it gets past base64url and reaches the parser.
            var input = all[random.Next(all.Length)];
            if (random.Next(2) == 0 && TryDecode(input, out var raw))
            {
                return Encoding.ASCII.GetBytes(Base64Url.EncodeToString(Fuzzer.Mutate(random, raw, [raw])));
            }
            return Fuzzer.Next(random, all);
        });
    }

    [Fact]
    public void Tickets_with_any_expiry_verify_exactly_when_still_valid()
    {
        var seed = Fuzzer.Seed(0x4E1A0004);
        var random = new Random(seed);
        var iterations = Fuzzer.Iterations(2_000) / 10;
        Fuzzer.Log($"relay-ticket expiry: seed {seed}, {iterations} tickets");
        var now = _clock.GetUtcNow();
        DateTimeOffset[] extremes = [DateTimeOffset.UnixEpoch, DateTimeOffset.MaxValue, now, now.AddSeconds(5), now.AddSeconds(-5), now.AddSeconds(-6)];
        for (var i = 0; i < iterations + extremes.Length; i++)
        {
            var notAfter = i < extremes.Length ? extremes[i] : DateTimeOffset.FromUnixTimeSeconds(random.NextInt64(0, DateTimeOffset.MaxValue.ToUnixTimeSeconds() + 1));
            var ticket = RelayTicket.Issue(_ca, Presenter, "connector/cn_1", notAfter);
            var valid = notAfter.ToUnixTimeSeconds() >= (now - RelayTicket.ClockTolerance).ToUnixTimeSeconds();
            Assert.True(valid == RelayTicket.TryVerifyFor(ticket.Text, Presenter, _ca, _clock, out _, out var error), $"notAfter {notAfter:O}: {error}");
        }
    }

    [Fact]
    public void A_ticket_has_one_text_form_only()
    {
        var text = RelayTicket.Issue(_ca, Presenter, "connector/cn_1", _clock.GetUtcNow().AddMinutes(5)).Text;
        Assert.True(RelayTicket.TryVerifyFor(text, Presenter, _ca, _clock, out _, out var error), error);
        // Base64Url.DecodeFromChars skips whitespace and takes padding; none of these is the issued text.
        foreach (var variant in new[] { text[..10] + "\n" + text[10..], text + " ", "\t" + text, text + "==", text[..20] + "\r\n" + text[20..] })
        {
            Assert.False(RelayTicket.TryVerifyFor(variant, Presenter, _ca, _clock, out _, out error));
            Assert.Contains("malformed", error, StringComparison.Ordinal);
        }
    }

    private bool Verify(string text, HashSet<string> issued)
    {
        if (!RelayTicket.TryVerifyFor(text, Presenter, _ca, _clock, out var ticket, out var error))
        {
            Assert.Null(ticket);
            Assert.NotEmpty(error);
            return false;
        }
        Assert.Contains(text, issued);
        Assert.True(ticket.Names(Presenter));
        return true;
    }

    private static bool TryDecode(byte[] input, out byte[] raw)
    {
        raw = [];
        try
        {
            raw = Base64Url.DecodeFromChars(Encoding.Latin1.GetString(input));
            return raw.Length > 0;
        }
        catch (FormatException)
        {
            return false;
        }
    }

    private static void DecodeAll(in ReadOnlySequence<byte> payload)
    {
        // Whatever the type byte said, every decoder must cope with every payload.
        RelayFrameCodec.TryReadBind(payload, out _, out _);
        RelayFrameCodec.TryReadBindOk(payload, out _, out _, out _, out _, out _);
        RelayFrameCodec.TryReadPeerState(payload, out _, out _);
        RelayFrameCodec.TryReadBindRefused(payload, out _, out _, out _);
        RelayFrameCodec.TryReadData(payload, out _, out _);
        RelayFrameCodec.TryReadPing(payload, out _);
        RelayFrameCodec.TryReadError(payload, out _, out _);
        RelayFrameCodec.TryReadUnbind(payload, out _);
    }

    private static RelayFrame Frame(Func<byte[], int> write, int length)
    {
        var bytes = new byte[length];
        Assert.Equal(length, write(bytes));
        var sequence = new ReadOnlySequence<byte>(bytes);
        Assert.Equal(RelayFrameStatus.Frame, RelayFrameCodec.TryRead(ref sequence, out var frame, out var error));
        Assert.Empty(error);
        Assert.True(sequence.IsEmpty);
        return frame;
    }

    private static string Ascii(Random random, int min, int max)
    {
        var chars = new char[random.Next(min, random.Next(2) == 0 ? Math.Min(max, 40) + 1 : max + 1)];
        for (var i = 0; i < chars.Length; i++)
        {
            chars[i] = (char)random.Next(0x21, 0x7F);
        }
        return new string(chars);
    }
}

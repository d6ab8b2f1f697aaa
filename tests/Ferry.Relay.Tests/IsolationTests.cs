using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using Ferry.Relay.Tests.Support;

namespace Ferry.Relay.Tests;

/// <summary>One misbehaving peer (too slow, or hostile) must cost the other peers of a relay nothing but a little CPU.</summary>
public sealed class IsolationTests
{
    [Fact]
    public async Task ASlowReceiverDoesNotStallOtherPairsEvenFromTheSameSender()
    {
        await using var h = new RelayHarness();
        var relay = await h.StartRelayAsync("relay/rl_eu1", queueCapacity: 64, queueFullWait: TimeSpan.FromMilliseconds(5));
        var sender = await h.LinkAsync(relay, "connector/cn_busy");
        var fast = await h.LinkAsync(relay, "device/dv_fast");
        await using var slow = await RawRelayClient.ConnectAsync(relay.BoundEndpoints[0], h.CertificateFor("device/dv_slow"), receiveBufferSize: 4096);

        var fastTicket = h.Ticket("connector/cn_busy", "device/dv_fast");
        var slowTicket = h.Ticket("connector/cn_busy", "device/dv_slow");
        await sender.BindAsync(fastTicket, Bounded.Ct).Within();
        await fast.BindAsync(fastTicket, Bounded.Ct).Within();
        await sender.BindAsync(slowTicket, Bounded.Ct).Within();
        await slow.BindAsync(1, slowTicket);
        Assert.NotNull(await slow.ReadUntilAsync(RelayFrameType.BindOk));

        // From here on the slow peer never reads: its TCP window closes, its relay queue fills, and the relay must drop.
        using var floodStop = CancellationTokenSource.CreateLinkedTokenSource(Bounded.Ct);
        var flooded = 0;
        var flood = Task.Run(
            async () =>
            {
                var packet = new byte[16 * 1024];
                for (var i = 0; i < 50_000 && !floodStop.IsCancellationRequested; i++)
                {
                    await sender.SendAsync("device/dv_slow", packet, floodStop.Token).AsTask().ContinueWith(_ => { }, TaskScheduler.Default);
                    flooded++;
                }
            },
            Bounded.Ct);

        await Bounded.UntilAsync(() => relay.GetCounters().RefusedFor(RelayRefusal.QueueFull) > 0, "the slow receiver's queue overflowing", TimeSpan.FromSeconds(20));

        var watch = Stopwatch.StartNew();
        await Task.WhenAll(
            Exchange.RunAsync(p => sender.SendAsync("device/dv_fast", p, Bounded.Ct), fast.Packets, "connector/cn_busy", new PacketLedger(3), windows: 5, window: 50),
            Exchange.RunAsync(p => fast.SendAsync("connector/cn_busy", p, Bounded.Ct), sender.Packets, "device/dv_fast", new PacketLedger(4), windows: 5, window: 50))
            .WaitAsync(TimeSpan.FromSeconds(30), Bounded.Ct);
        watch.Stop();
        await floodStop.CancelAsync();
        await flood.Within();

        var counters = relay.GetCounters();
        Bounded.Log($"fast pair: 500 packets in {watch.ElapsedMilliseconds} ms while {flooded} flood packets went at the slow peer; dropped {counters.RefusedFor(RelayRefusal.QueueFull)}");
        Assert.True(counters.RefusedFor(RelayRefusal.QueueFull) > 0);
        Assert.Equal(RelayLinkState.Open, sender.State);
        Assert.Equal(3, counters.PeersConnected);
    }

    [Fact]
    public async Task HostileFramesOverTlsCloseOnlyTheirOwnLink()
    {
        var seed = Fuzz.Seed();
        Bounded.Log($"live fuzz seed {seed} (replay with FERRY_FUZZ_SEED={seed})");
        var random = new Random(seed);
        await using var h = new RelayHarness();
        var relay = await h.StartRelayAsync("relay/rl_eu1");
        var a = await h.LinkAsync(relay, "connector/cn_a");
        var b = await h.LinkAsync(relay, "device/dv_b");
        var ticket = h.Ticket("connector/cn_a", "device/dv_b");
        await a.BindAsync(ticket, Bounded.Ct).Within();
        await b.BindAsync(ticket, Bounded.Ct).Within();

        var samples = RelayFrameCodecTests.Samples();
        var watch = Stopwatch.StartNew();
        var clients = 0;
        var ledgerSeed = 100;
        for (var round = 0; round < 12 && watch.Elapsed < TimeSpan.FromSeconds(20); round++)
        {
            // Several hostile peers at once, each with a valid certificate, so only the frames themselves are wrong.
            var hostile = Enumerable.Range(0, 4).Select(i =>
            {
                var identity = $"device/fz_{round}_{i}";
                var script = HostileScript(random, samples, h.Ticket(identity, "connector/cn_a"));
                return RunHostileAsync(relay, h.CertificateFor(identity), script);
            }).ToArray();
            clients += hostile.Length;

            // The legitimate pair keeps talking the whole time, every byte checked.
            await Exchange.RunAsync(p => a.SendAsync("device/dv_b", p, Bounded.Ct), b.Packets, "connector/cn_a", new PacketLedger(ledgerSeed++), windows: 1, window: 20).WaitAsync(Bounded.Timeout, Bounded.Ct);
            await Task.WhenAll(hostile).WaitAsync(Bounded.Timeout, Bounded.Ct);
        }

        var counters = relay.GetCounters();
        Bounded.Log($"{clients} hostile links in {watch.ElapsedMilliseconds} ms; protocol errors {counters.RefusedFor(RelayRefusal.ProtocolError)}");
        Assert.True(counters.RefusedFor(RelayRefusal.ProtocolError) > 0);
        Assert.Equal(RelayLinkState.Open, a.State);
        Assert.Equal(RelayLinkState.Open, b.State);
        await Bounded.UntilAsync(() => relay.GetCounters().PeersConnected == 2, "hostile links all gone");
        await Exchange.RunAsync(p => b.SendAsync("connector/cn_a", p, Bounded.Ct), a.Packets, "device/dv_b", new PacketLedger(1), windows: 2, window: 50).WaitAsync(Bounded.Timeout, Bounded.Ct);
    }

    /// <summary>Random bytes, mutated valid frames, or valid frames then junk; always ends in bytes no relay can accept.</summary>
    private static byte[] HostileScript(Random random, byte[][] samples, string ticket)
    {
        var bytes = new List<byte>();
        var bind = new byte[RelayFrameCodec.BindLength(ticket)];
        RelayFrameCodec.WriteBind(bind, 1, ticket);
        switch (random.Next(4))
        {
            case 0:
                var junk = new byte[random.Next(1, 4096)];
                random.NextBytes(junk);
                bytes.AddRange(junk);
                break;
            case 1:
                bytes.AddRange(bind);
                for (var i = random.Next(1, 20); i > 0; i--)
                {
                    bytes.AddRange(samples[random.Next(samples.Length)]);
                }

                for (var m = random.Next(1, 6); m > 0; m--)
                {
                    bytes[random.Next(bytes.Count)] = (byte)random.Next(256);
                }

                break;
            case 2:
                // A maximal length that lies: the header promises more than the limit.
                bytes.AddRange(bind);
                bytes.AddRange(new byte[] { 4, 0xff, 0xff, 0xff });
                break;
            default:
                bytes.AddRange(bind);
                var data = new byte[RelayFrameCodec.DataLength(100)];
                RelayFrameCodec.WriteData(data, 1, new byte[100]);
                bytes.AddRange(data);
                BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(4), (ushort)random.Next(2, 65536));
                bytes.AddRange(data);
                break;
        }

        // A mutated length may leave a frame waiting for bytes that never come; enough 0xee completes any frame the
        // relay could be waiting on, and the next header byte 0xee is an unknown type, so every script ends in a close.
        bytes.AddRange(Enumerable.Repeat((byte)0xee, RelayFrameCodec.HeaderLength + RelayFrameCodec.MaxPayloadLength + 1));
        return [.. bytes];
    }

    private static async Task RunHostileAsync(RelayServer relay, System.Security.Cryptography.X509Certificates.X509Certificate2 certificate, byte[] script)
    {
        await using var client = await RawRelayClient.ConnectAsync(relay.BoundEndpoints[0], certificate);
        try
        {
            await client.SendAsync(script);
        }
        catch (IOException)
        {
            // The relay may close the link while the rest of the script is still being written.
        }

        // Read whatever the relay answers until it closes the link; a hostile peer must be cut off, not served forever.
        for (var i = 0; i < 1_000; i++)
        {
            (RelayFrameType, byte[])? frame;
            try
            {
                frame = await client.ReadFrameAsync();
            }
            catch (InvalidDataException)
            {
                return;
            }

            if (frame is null)
            {
                return;
            }

            if (frame.Value.Item1 == RelayFrameType.Error)
            {
                Assert.True(RelayFrameCodec.TryReadError(new ReadOnlySequence<byte>(frame.Value.Item2), out _, out var message));
                Assert.NotEmpty(message);
            }
        }

        Assert.Fail("the relay kept a hostile link open");
    }
}

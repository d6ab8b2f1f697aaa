using Ferry.Relay.Tests.Support;

namespace Ferry.Relay.Tests;

public sealed class RelayPoolTests
{
    private const string Connector = "connector/cn_4f2a";
    private const string Device = "device/dv_91c0";

    [Fact]
    public async Task KillingTheActiveRelayMovesTrafficToTheOtherWithoutTheCallerDoingAnything()
    {
        await using var h = new RelayHarness();
        var first = await h.StartRelayAsync("relay/rl_eu1");
        var second = await h.StartRelayAsync("relay/rl_eu2");
        var connector = await h.PoolAsync(Connector, first, second);
        var device = await h.PoolAsync(Device, first, second);
        Assert.Equal(["relay/rl_eu1", "relay/rl_eu2"], connector.ConnectedRelays);

        var ticket = h.Ticket(Connector, Device);
        Assert.Equal(2, (await connector.BindAsync(ticket, Bounded.Ct).Within()).Count);
        Assert.Equal(2, (await device.BindAsync(ticket, Bounded.Ct).Within()).Count);
        Assert.Equal("relay/rl_eu1", connector.ActiveRelay);

        await BothWaysAsync(connector, device, seed: 10);
        Assert.Equal(400, first.GetCounters().PacketsOut);
        Assert.Equal(0, second.GetCounters().PacketsIn);

        // A steady stream in flight while the relay dies: some packets may be lost in the switch (QUIC retransmits),
        // but the stream must keep arriving through the other relay with no action from the sender.
        using var pumpStop = CancellationTokenSource.CreateLinkedTokenSource(Bounded.Ct);
        var sent = 0;
        var pump = Task.Run(
            async () =>
            {
                for (var i = 0; i < 20_000 && !pumpStop.IsCancellationRequested; i++)
                {
                    await connector.SendAsync(Device, BitConverter.GetBytes(i), pumpStop.Token);
                    Interlocked.Increment(ref sent);
                    await Task.Delay(1, pumpStop.Token).ContinueWith(_ => { }, TaskScheduler.Default);
                }
            },
            Bounded.Ct);
        var received = 0;
        async Task ReceiveAsync(int count)
        {
            for (var i = 0; i < count; i++)
            {
                var packet = await device.Packets.ReadAsync(Bounded.Ct).AsTask().Within();
                Assert.Equal(Connector, packet.FromPeer);
                received++;
            }
        }

        await ReceiveAsync(20);
        await first.DisposeAsync().Within();
        var receivedAtKill = received;

        // Keep receiving (packets that came through the first relay may still be queued here) until the second relay has
        // carried a good stretch of the stream.
        for (var i = 0; i < 20_000 && second.GetCounters().PacketsOut < 50; i++)
        {
            await ReceiveAsync(1);
        }

        await pumpStop.CancelAsync();
        await pump.Within();
        Assert.Equal("relay/rl_eu2", connector.ActiveRelay);
        Assert.Equal("relay/rl_eu2", device.ActiveRelay);
        Assert.True(second.GetCounters().PacketsOut >= 50, "the post-failover stream went through the second relay");
        Assert.True(received - receivedAtKill > 0);
        Bounded.Log($"pumped {sent}, received {received} ({received - receivedAtKill} after the kill)");

        // Drain the pump's stragglers: one relay path keeps order, so once a marker sent after them arrives, all have.
        var marker = new byte[] { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
        Assert.True(await connector.SendAsync(Device, marker, Bounded.Ct).Within());
        for (var i = 0; i < 25_000; i++)
        {
            if ((await device.Packets.ReadAsync(Bounded.Ct).AsTask().Within()).Packet.Span.SequenceEqual(marker))
            {
                break;
            }
        }

        var outBefore = second.GetCounters().PacketsOut;
        await BothWaysAsync(connector, device, seed: 20);
        Assert.Equal(outBefore + 400, second.GetCounters().PacketsOut);
    }

    [Fact]
    public async Task ALostLinkIsRedialledAndReboundByThePoolItself()
    {
        await using var h = new RelayHarness();
        var first = await h.StartRelayAsync("relay/rl_eu1");
        var second = await h.StartRelayAsync("relay/rl_eu2");
        var connector = await h.PoolAsync(Connector, first, second);
        var device = await h.PoolAsync(Device, first, second);
        var ticket = h.Ticket(Connector, Device);
        await connector.BindAsync(ticket, Bounded.Ct).Within();
        await device.BindAsync(ticket, Bounded.Ct).Within();

        // Kick the connector's link off the first relay by connecting the same identity there directly:
        // the pool re-dials that relay, replaces the intruder, and re-binds the remembered ticket by itself.
        var intruder = await h.LinkAsync(first, Connector);
        await Bounded.UntilAsync(() => intruder.State != RelayLinkState.Open, "pool reconnected and replaced the intruder");
        await Bounded.UntilAsync(() => connector.ActiveRelay == "relay/rl_eu1", "back on the preferred relay");

        await Bounded.UntilAsync(() => connector.RelayFor(Device) == "relay/rl_eu1", "ticket re-bound on the preferred relay");
        var before = first.GetCounters().PacketsOut;
        await BothWaysAsync(connector, device, seed: 30);
        Assert.Equal(before + 400, first.GetCounters().PacketsOut);
        Assert.True(first.GetCounters().RefusedFor(RelayRefusal.Replaced) >= 2);
    }

    [Fact]
    public async Task PeersWithDifferentRelaySetsMeetOnTheRelayTheyShare()
    {
        await using var h = new RelayHarness();
        var first = await h.StartRelayAsync("relay/rl_eu1");
        var second = await h.StartRelayAsync("relay/rl_eu2");
        var connector = await h.PoolAsync(Connector, first, second);
        var device = await h.PoolAsync(Device, second);
        var ticket = h.Ticket(Connector, Device);
        await connector.BindAsync(ticket, Bounded.Ct).Within();
        await device.BindAsync(ticket, Bounded.Ct).Within();

        // The connector prefers the first relay, but that relay says the device is not there, so it uses the second.
        await Bounded.UntilAsync(() => connector.RelayFor(Device) == "relay/rl_eu2", "presence notice from the shared relay");
        Assert.Equal("relay/rl_eu1", connector.ActiveRelay);
        await BothWaysAsync(connector, device, seed: 40);
        Assert.Equal(0, first.GetCounters().PacketsIn);
        Assert.Equal(400, second.GetCounters().PacketsOut);
    }

    [Fact]
    public async Task BindRefusesTicketsThatCannotBeUsedByThisPeer()
    {
        await using var h = new RelayHarness();
        var relay = await h.StartRelayAsync("relay/rl_eu1");
        var pool = await h.PoolAsync(Connector, relay);

        var refused = await Assert.ThrowsAsync<RelayException>(() => pool.BindAsync(h.Ticket("device/x", "device/y"), Bounded.Ct).Within());
        Assert.Equal(RelayRefusal.TicketNotForPresenter, refused.Reason);
        Assert.False(await pool.SendAsync("device/x", new byte[] { 1 }, Bounded.Ct).Within());
    }

    private static Task BothWaysAsync(RelayPool connector, RelayPool device, int seed) =>
        Task.WhenAll(
            Exchange.RunAsync(p => connector.SendAsync(Device, p, Bounded.Ct), device.Packets, Connector, new PacketLedger(seed), windows: 2, window: 100),
            Exchange.RunAsync(p => device.SendAsync(Connector, p, Bounded.Ct), connector.Packets, Device, new PacketLedger(seed + 1), windows: 2, window: 100))
            .WaitAsync(TimeSpan.FromSeconds(30), Bounded.Ct);
}

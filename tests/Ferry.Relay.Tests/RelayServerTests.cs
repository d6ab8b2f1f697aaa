using Ferry.Relay.Tests.Support;

namespace Ferry.Relay.Tests;

public sealed class RelayServerTests
{
    [Fact]
    public async Task PacketsFlowBothWaysWithEveryByteChecked()
    {
        await using var h = new RelayHarness();
        var relay = await h.StartRelayAsync("relay/rl_eu1");
        var connector = await h.LinkAsync(relay, "connector/cn_4f2a");
        var device = await h.LinkAsync(relay, "device/dv_91c0");
        Assert.Equal("relay/rl_eu1", connector.RelayIdentity);

        var ticket = h.Ticket("device/dv_91c0", "connector/cn_4f2a");
        var bound = await connector.BindAsync(ticket, Bounded.Ct).Within();
        Assert.Equal("device/dv_91c0", bound.RemotePeer);
        Assert.Equal("connector/cn_4f2a", (await device.BindAsync(ticket, Bounded.Ct).Within()).RemotePeer);

        var toDevice = new PacketLedger(seed: 1);
        var toConnector = new PacketLedger(seed: 2);
        await Task.WhenAll(
            Exchange.RunAsync(p => connector.SendAsync("device/dv_91c0", p, Bounded.Ct), device.Packets, "connector/cn_4f2a", toDevice, windows: 10, window: 100),
            Exchange.RunAsync(p => device.SendAsync("connector/cn_4f2a", p, Bounded.Ct), connector.Packets, "device/dv_91c0", toConnector, windows: 10, window: 100))
            .WaitAsync(TimeSpan.FromSeconds(60), Bounded.Ct);

        var counters = relay.GetCounters();
        Assert.Equal(2, counters.PeersConnected);
        Assert.Equal(2000, counters.PacketsIn);
        Assert.Equal(2000, counters.PacketsOut);
        Assert.Equal(0, counters.PacketsDropped);
        Assert.True(counters.BytesIn > 2000 * 4 && counters.BytesOut > 2000 * 4);
        Assert.Equal(0, connector.PacketsDropped + device.PacketsDropped);

        await Bounded.UntilAsync(() => relay.GetCounters().PacketsPerSecond > 0, "packet rate measured");

        // The round trip doubles as the relayed path's latency probe.
        Assert.True(await connector.PingAsync(Bounded.Ct).Within() < TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task ListensOnEveryGivenEndpointAndReportsTheBoundPorts()
    {
        Assert.SkipUnless(System.Net.Sockets.Socket.OSSupportsIPv6, "IPv6 loopback is not available on this host");
        await using var h = new RelayHarness();
        var relay = h.Own(new RelayServer(new RelayServerOptions
        {
            Endpoints = [new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0), new System.Net.IPEndPoint(System.Net.IPAddress.IPv6Loopback, 0)],
            ServerCertificate = h.CertificateFor("relay/rl_dual"),
            CaCertificate = h.Pki.Ca,
        }));
        await relay.StartAsync(Bounded.Ct).Within();

        Assert.Equal(2, relay.BoundEndpoints.Count);
        Assert.All(relay.BoundEndpoints, e => Assert.NotEqual(0, e.Port));
        var v4 = await h.LinkAsync(relay, "device/dv_4");
        var v6 = h.Own(await RelayLink.ConnectAsync(new RelayEndpoint("::1", relay.BoundEndpoints[1].Port), h.LinkOptions("connector/cn_6"), null, Bounded.Ct).Within());
        var ticket = h.Ticket("device/dv_4", "connector/cn_6");
        await v4.BindAsync(ticket, Bounded.Ct).Within();
        await v6.BindAsync(ticket, Bounded.Ct).Within();
        Assert.True(await v6.SendAsync("device/dv_4", new byte[] { 6 }, Bounded.Ct).Within());
        Assert.Equal(new byte[] { 6 }, (await v4.Packets.ReadAsync(Bounded.Ct).AsTask().Within()).Packet.ToArray());
    }

    [Fact]
    public async Task BadTicketsAreRefusedWithTheirReasonAndCountedWhileTheLinkStaysUp()
    {
        await using var h = new RelayHarness();
        using var otherPki = TestPki.Create("Other CA");
        var relay = await h.StartRelayAsync("relay/rl_eu1");
        var link = await h.LinkAsync(relay, "device/dv_1");

        var cases = new (string Ticket, RelayRefusal Expected)[]
        {
            (RelayTicket.Issue(otherPki.CaKey, "device/dv_1", "connector/cn_1", DateTimeOffset.UtcNow.AddMinutes(5)).Text, RelayRefusal.TicketBadSignature),
            (RelayTicket.Issue(h.Pki.CaKey, "device/dv_1", "connector/cn_1", DateTimeOffset.UtcNow.AddSeconds(-10)).Text, RelayRefusal.TicketExpired),
            (h.Ticket("device/dv_2", "connector/cn_1"), RelayRefusal.TicketNotForPresenter),
            ("bm90LWEtdGlja2V0", RelayRefusal.TicketMalformed),
        };
        foreach (var (ticket, expected) in cases)
        {
            var refused = await Assert.ThrowsAsync<RelayException>(() => link.BindAsync(ticket, Bounded.Ct).Within());
            Assert.Equal(expected, refused.Reason);
            Assert.Contains(expected.ToString(), refused.Message, StringComparison.Ordinal);
        }

        var counters = relay.GetCounters();
        foreach (var (_, expected) in cases)
        {
            Assert.Equal(1, counters.RefusedFor(expected));
        }

        // Refusals are per request: the same link still binds a good ticket.
        Assert.Equal(RelayLinkState.Open, link.State);
        await link.BindAsync(h.Ticket("device/dv_1", "connector/cn_1"), Bounded.Ct).Within();
        Assert.False(await link.SendAsync("connector/cn_9", new byte[] { 1 }, Bounded.Ct).Within());
    }

    [Fact]
    public async Task DataWithoutBothTicketsIsDroppedAndCountedByReason()
    {
        await using var h = new RelayHarness();
        var relay = await h.StartRelayAsync("relay/rl_eu1");
        var a = await h.LinkAsync(relay, "device/dv_a");
        var ticket = h.Ticket("device/dv_a", "connector/cn_b");
        await a.BindAsync(ticket, Bounded.Ct).Within();

        // B not connected at all.
        Assert.True(await a.SendAsync("connector/cn_b", new byte[] { 1, 2, 3 }, Bounded.Ct).Within());
        await Bounded.UntilAsync(() => relay.GetCounters().RefusedFor(RelayRefusal.PeerNotConnected) == 1, "PeerNotConnected counted");

        // B connected but has not presented the ticket itself.
        var b = await h.LinkAsync(relay, "connector/cn_b");
        Assert.True(await a.SendAsync("connector/cn_b", new byte[] { 4, 5, 6 }, Bounded.Ct).Within());
        await Bounded.UntilAsync(() => relay.GetCounters().RefusedFor(RelayRefusal.PeerNotBound) == 1, "PeerNotBound counted");

        // A raw peer with a good certificate but no ticket at all, naming a channel it never bound.
        await using var raw = await RawRelayClient.ConnectAsync(relay.BoundEndpoints[0], h.CertificateFor("device/dv_raw"));
        await raw.SendDataAsync(1, new byte[] { 7 });
        await Bounded.UntilAsync(() => relay.GetCounters().RefusedFor(RelayRefusal.UnknownChannel) == 1, "UnknownChannel counted");

        // Once both sides bind, the very same packets flow.
        await b.BindAsync(ticket, Bounded.Ct).Within();
        Assert.True(await a.SendAsync("connector/cn_b", new byte[] { 8, 9 }, Bounded.Ct).Within());
        var received = await b.Packets.ReadAsync(Bounded.Ct).AsTask().Within();
        Assert.Equal("device/dv_a", received.FromPeer);
        Assert.Equal(new byte[] { 8, 9 }, received.Packet.ToArray());
        var counters = relay.GetCounters();
        Assert.Equal(3, counters.PacketsDropped);
        Assert.Equal(1, counters.PacketsOut);
    }

    [Fact]
    public async Task RelayTellsEachPeerWhetherTheOtherEndIsThere()
    {
        await using var h = new RelayHarness();
        var relay = await h.StartRelayAsync("relay/rl_eu1");
        var a = await h.LinkAsync(relay, "device/dv_a");
        var ticket = h.Ticket("device/dv_a", "connector/cn_b");
        await a.BindAsync(ticket, Bounded.Ct).Within();
        Assert.False(a.IsPeerPresent("connector/cn_b"));

        var b = await h.LinkAsync(relay, "connector/cn_b");
        await b.BindAsync(ticket, Bounded.Ct).Within();
        Assert.True(b.IsPeerPresent("device/dv_a"));
        await Bounded.UntilAsync(() => a.IsPeerPresent("connector/cn_b"), "A told that B arrived");

        await b.DisposeAsync().Within();
        await Bounded.UntilAsync(() => !a.IsPeerPresent("connector/cn_b"), "A told that B left");

        var again = await h.LinkAsync(relay, "connector/cn_b");
        await again.BindAsync(ticket, Bounded.Ct).Within();
        await Bounded.UntilAsync(() => a.IsPeerPresent("connector/cn_b"), "A told that B is back");
        Assert.True(again.Unbind("device/dv_a"));
        await Bounded.UntilAsync(() => !a.IsPeerPresent("connector/cn_b"), "A told that B unbound");
    }

    [Fact]
    public async Task BindingsPerLinkAreCappedAndUnbindFreesASlot()
    {
        await using var h = new RelayHarness();
        var relay = await h.StartRelayAsync("relay/rl_eu1", maxBindings: 2);
        var link = await h.LinkAsync(relay, "connector/cn_1");
        var first = await link.BindAsync(h.Ticket("connector/cn_1", "device/dv_1"), Bounded.Ct).Within();
        var second = await link.BindAsync(h.Ticket("connector/cn_1", "device/dv_2"), Bounded.Ct).Within();
        Assert.NotEqual(first.Channel, second.Channel);

        var refused = await Assert.ThrowsAsync<RelayException>(() => link.BindAsync(h.Ticket("connector/cn_1", "device/dv_3"), Bounded.Ct).Within());
        Assert.Equal(RelayRefusal.TooManyBindings, refused.Reason);
        Assert.Equal(1, relay.GetCounters().RefusedFor(RelayRefusal.TooManyBindings));

        // Renewing an existing pair needs no new slot; releasing one makes room.
        Assert.Equal(first.Channel, (await link.BindAsync(h.Ticket("device/dv_1", "connector/cn_1"), Bounded.Ct).Within()).Channel);
        Assert.True(link.Unbind("device/dv_1"));
        Assert.False(link.Unbind("device/dv_1"));
        await link.BindAsync(h.Ticket("connector/cn_1", "device/dv_3"), Bounded.Ct).Within();
        Assert.Equal(["device/dv_2", "device/dv_3"], link.Bindings.Select(b => b.RemotePeer).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task CertificateFromAnotherCaIsRefusedAndCounted()
    {
        await using var h = new RelayHarness();
        using var otherPki = TestPki.Create("Other CA");
        var relay = await h.StartRelayAsync("relay/rl_eu1");
        using var foreign = otherPki.Issue("device/dv_1");

        var refused = await Assert.ThrowsAsync<RelayException>(() =>
            RelayLink.ConnectAsync(RelayHarness.EndpointOf(relay), h.LinkOptions("device/dv_1", certificate: foreign), null, Bounded.Ct).Within());
        Bounded.Log($"peer saw: {refused.Reason} {refused.Message}");
        Assert.Equal(RelayRefusal.HandshakeFailed, refused.Reason);
        Assert.Contains("certificate", refused.Message, StringComparison.Ordinal);
        await Bounded.UntilAsync(() => relay.GetCounters().RefusedFor(RelayRefusal.UntrustedCertificate) == 1, "UntrustedCertificate counted");
        Assert.Equal(0, relay.GetCounters().PeersConnected);
    }

    [Fact]
    public async Task ExpiredCertificateAndCertificateWithoutIdentityAreRefused()
    {
        await using var h = new RelayHarness();
        var relay = await h.StartRelayAsync("relay/rl_eu1");
        using var expired = h.Pki.Issue("device/dv_1", notBefore: DateTimeOffset.UtcNow.AddDays(-2), notAfter: DateTimeOffset.UtcNow.AddDays(-1));
        using var anonymous = h.Pki.Issue("alice");

        await Assert.ThrowsAsync<RelayException>(() =>
            RelayLink.ConnectAsync(RelayHarness.EndpointOf(relay), h.LinkOptions("device/dv_1", certificate: expired), null, Bounded.Ct).Within());
        await Bounded.UntilAsync(() => relay.GetCounters().RefusedFor(RelayRefusal.UntrustedCertificate) == 1, "expired certificate counted");

        // The peer side refuses to even use a certificate without an identity, so speak raw TLS.
        await using (var raw = await RawRelayClient.ConnectAsync(relay.BoundEndpoints[0], anonymous).ContinueWith(t => t.IsCompletedSuccessfully ? t.Result : null, TaskScheduler.Default))
        {
            if (raw is not null)
            {
                Assert.Null(await raw.ReadFrameAsync());
            }
        }

        await Bounded.UntilAsync(() => relay.GetCounters().RefusedFor(RelayRefusal.BadIdentity) == 1, "BadIdentity counted");
    }

    [Fact]
    public async Task NoClientCertificateIsRefusedAndCounted()
    {
        await using var h = new RelayHarness();
        var relay = await h.StartRelayAsync("relay/rl_eu1");

        // In TLS 1.3 the client may finish its half of the handshake before the relay refuses; then its first read fails.
        var connect = RawRelayClient.ConnectAsync(relay.BoundEndpoints[0], certificate: null);
        try
        {
            await using var raw = await connect;
            Assert.Null(await raw.ReadFrameAsync());
        }
        catch (Exception ex) when (ex is System.Security.Authentication.AuthenticationException or IOException)
        {
            Bounded.Log($"client saw handshake failure: {ex.Message}");
        }

        await Bounded.UntilAsync(() => relay.GetCounters().RefusedFor(RelayRefusal.NoClientCertificate) == 1, "NoClientCertificate counted");
        Assert.Equal(0, relay.GetCounters().LinksAccepted);
    }

    [Fact]
    public async Task PeerRefusesARelayThatIsNotTheExpectedOne()
    {
        await using var h = new RelayHarness();
        var relay = await h.StartRelayAsync("relay/rl_eu1");
        var options = new RelayLinkOptions
        {
            ClientCertificate = h.CertificateFor("device/dv_1"),
            CaCertificate = h.Pki.Ca,
            ExpectedRelayIdentity = "relay/rl_us1",
        };

        var refused = await Assert.ThrowsAsync<RelayException>(() => RelayLink.ConnectAsync(RelayHarness.EndpointOf(relay), options, null, Bounded.Ct).Within());
        Assert.Equal(RelayRefusal.BadIdentity, refused.Reason);
        Assert.Contains("relay/rl_eu1", refused.Message, StringComparison.Ordinal);

        using var otherPki = TestPki.Create("Other CA");
        var wrongCa = new RelayLinkOptions { ClientCertificate = h.CertificateFor("device/dv_1"), CaCertificate = otherPki.Ca };
        refused = await Assert.ThrowsAsync<RelayException>(() => RelayLink.ConnectAsync(RelayHarness.EndpointOf(relay), wrongCa, null, Bounded.Ct).Within());
        Assert.Equal(RelayRefusal.UntrustedCertificate, refused.Reason);
    }

    [Fact]
    public async Task ANewLinkOfTheSameIdentityReplacesTheOldOne()
    {
        await using var h = new RelayHarness();
        var relay = await h.StartRelayAsync("relay/rl_eu1");
        var first = await h.LinkAsync(relay, "device/dv_1");
        var second = await h.LinkAsync(relay, "device/dv_1");

        var closure = await first.Completion.Within();
        Assert.Equal(RelayLinkState.Faulted, closure.State);
        Assert.Equal(RelayRefusal.Replaced, closure.Reason);
        Assert.Equal(RelayLinkState.Open, second.State);
        await second.PingAsync(Bounded.Ct).Within();
        Assert.Equal(1, relay.GetCounters().PeersConnected);
    }

    [Fact]
    public async Task StoppingTheRelayTellsPeersWhy()
    {
        await using var h = new RelayHarness();
        var relay = await h.StartRelayAsync("relay/rl_eu1");
        var link = await h.LinkAsync(relay, "device/dv_1");

        await relay.DisposeAsync().Within();

        var closure = await link.Completion.Within();
        Assert.Equal(RelayLinkState.Faulted, closure.State);
        Assert.Equal(RelayRefusal.ShuttingDown, closure.Reason);
        await Assert.ThrowsAsync<RelayException>(() => link.BindAsync(h.Ticket("device/dv_1", "connector/cn_1"), Bounded.Ct).Within());
        Assert.False(await link.SendAsync("connector/cn_1", new byte[] { 1 }, Bounded.Ct).Within());
    }
}

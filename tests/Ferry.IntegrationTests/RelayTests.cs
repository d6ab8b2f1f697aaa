using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using Ferry.Core.Api;
using Ferry.Core.ControlPlane;
using Ferry.Core.Security;
using Ferry.IntegrationTests.Infrastructure;
using Ferry.Relay;
using Microsoft.Extensions.Logging.Abstractions;

namespace Ferry.IntegrationTests;

/// <summary>Issue 3: real controller and relay processes; two peers with controller-issued certificates and tickets exchange checked data, and fail over when a relay dies.</summary>
public sealed class RelayTests
{
    [Fact]
    public async Task Peers_exchange_checked_data_through_a_relay_refuse_the_unticketed_and_fail_over_when_it_dies()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        var dir = Directory.CreateTempSubdirectory("ferry-relay-").FullName;
        await using var relayA = await StartRelayAsync(controller, "relay-a", dir);
        await using var relayB = await StartRelayAsync(controller, "relay-b", dir);
        await WaitForRelaysOnlineAsync(controller, 2);

        await controller.AdminAsync("network", "create", "corp");
        await controller.AdminAsync("resource", "add", "db.corp.internal", "--network", "corp", "--name", "db");
        var account = await controller.AdminJsonAsync<JsonElement>("service-account", "create", "app");
        await controller.AdminAsync("policy", "grant", "db", "--service-account", "app");
        var outsider = await controller.AdminJsonAsync<JsonElement>("service-account", "create", "outsider");
        var connectorTokens = await controller.ProvisionAsync("corp", "c1", dir);

        // The connector end: a daemon session in this process, with the provisioned tokens.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var connectorSession = TestPeers.Connector(controller, connectorTokens);
        var connectorRelays = new TaskCompletionSource<RelayInfo[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        var connectorTicket = new TaskCompletionSource<TicketIssuedMessage>(TaskCreationOptions.RunContinuationsAsynchronously);
        var connectorSignal = new TaskCompletionSource<CandidatesMessage>(TaskCreationOptions.RunContinuationsAsynchronously);
        connectorSession.OnMessage = (message, _, _) =>
        {
            if (message is CandidatesMessage c)
            {
                connectorSignal.TrySetResult(c);
            }
            if (message is RelaysMessage { Relays.Length: 2 } r)
            {
                connectorRelays.TrySetResult(r.Relays);
            }
            if (message is TicketIssuedMessage t)
            {
                connectorTicket.TrySetResult(t);
            }
            return Task.CompletedTask;
        };
        var connectorRun = connectorSession.RunAsync(stop.Token);

        // The device end: a service account signed in, holding its own session.
        var device = await TestPeers.DeviceAsync(controller, account.GetProperty("key").GetString()!, stop.Token);
        var strangerErrors = new TaskCompletionSource<ErrorMessage>(TaskCreationOptions.RunContinuationsAsynchronously);
        var stranger = await TestPeers.DeviceAsync(controller, outsider.GetProperty("key").GetString()!, stop.Token, m =>
        {
            if (m is ErrorMessage { Code: "signaling-refused" } e)
            {
                strangerErrors.TrySetResult(e);
            }
            return Task.CompletedTask;
        });

        var relays = await connectorRelays.Task.WaitAsync(TimeSpan.FromSeconds(30), ct);
        var connectorIdentity = await TestPeers.WaitForAsync(() => connectorSession.Session.Identity, "connector identity");
        var connectorCert = await TestPeers.WaitForAsync(() => connectorSession.Session.Certificate, "connector certificate");
        var deviceCert = await TestPeers.WaitForAsync(() => device.Session.Certificate, "device certificate");
        using var ca = X509Certificate2.CreateFromPem(device.Session.CaPem!);

        // Policy decides who may talk through a relay: the outsider has no grant in corp.
        var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => stranger.Session.RequestTicketAsync(connectorIdentity, ct));
        Assert.Contains("no resource of network 'corp' is granted", refused.Message, StringComparison.Ordinal);

        // Direct-path signaling follows the same rule: the outsider's offer is refused with the reason, and never reaches the connector.
        var offer = new CandidatesMessage(connectorIdentity, "ufrag123", "password-of-twenty-four!", [new CandidateInfo("host", "10.9.9.9:4000", 1)]);
        await stranger.Session.SendAsync(offer, ct);
        var signalRefused = await strangerErrors.Task.WaitAsync(TimeSpan.FromSeconds(10), ct);
        Assert.Equal(connectorIdentity, signalRefused.Subject);
        Assert.Contains("no resource of network 'corp' is granted", signalRefused.Message, StringComparison.Ordinal);
        // The granted device's offer arrives, naming the device (not whom the sender claimed) as the peer.
        await device.Session.SendAsync(offer, ct);
        var forwarded = await connectorSignal.Task.WaitAsync(TimeSpan.FromSeconds(10), ct);
        Assert.Equal(device.Session.Identity, forwarded.Peer);
        Assert.Equal("ufrag123", forwarded.Ufrag);
        Assert.Equal("10.9.9.9:4000", Assert.Single(forwarded.Candidates).Address);

        var ticket = await device.Session.RequestTicketAsync(connectorIdentity, ct);
        var pushed = await connectorTicket.Task.WaitAsync(TimeSpan.FromSeconds(10), ct);
        Assert.Equal(ticket.Ticket, pushed.Ticket);
        Assert.Equal(device.Session.Identity, pushed.Peer);

        var endpoints = relays.Select(r => r.Tcp[0]).Select(e => System.Net.IPEndPoint.Parse(e)).Select(e => new RelayEndpoint(e.Address.ToString(), e.Port)).ToArray();
        await using var devicePool = new RelayPool(new RelayPoolOptions { Relays = endpoints, Link = new RelayLinkOptions { ClientCertificate = deviceCert, CaCertificate = ca } });
        await using var connectorPool = new RelayPool(new RelayPoolOptions { Relays = endpoints, Link = new RelayLinkOptions { ClientCertificate = connectorCert, CaCertificate = ca } });
        await devicePool.StartAsync(ct);
        await connectorPool.StartAsync(ct);
        await TestPeers.WaitForAsync(() => devicePool.ConnectedRelays.Count == 2 && connectorPool.ConnectedRelays.Count == 2 ? "yes" : null, "both pools linked to both relays");
        var deviceBindings = await devicePool.BindAsync(ticket.Ticket, ct);
        var connectorBindings = await connectorPool.BindAsync(pushed.Ticket, ct);
        Assert.True(deviceBindings.Count == 2 && connectorBindings.Count == 2,
            $"bindings: device {deviceBindings.Count}, connector {connectorBindings.Count}; connected {string.Join(",", devicePool.ConnectedRelays)} / {string.Join(",", connectorPool.ConnectedRelays)}");

        await ExchangeAsync(devicePool, connectorPool, device.Session.Identity!, connectorIdentity, 500, ct);
        var used = devicePool.RelayFor(connectorIdentity);
        Assert.NotNull(used);

        // A peer with a forged ticket (signed by another key) is refused by the relay itself, and counted.
        using var forger = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var forged = RelayTicket.Issue(forger, stranger.Session.Identity!, connectorIdentity, DateTimeOffset.UtcNow.AddMinutes(5));
        var strangerCert = await TestPeers.WaitForAsync(() => stranger.Session.Certificate, "stranger certificate");
        await using (var link = await RelayLink.ConnectAsync(endpoints[0], new RelayLinkOptions { ClientCertificate = strangerCert, CaCertificate = ca }, null, ct))
        {
            var bindRefused = await Assert.ThrowsAsync<RelayException>(() => link.BindAsync(forged.Text, ct));
            Assert.Equal(RelayRefusal.TicketBadSignature, bindRefused.Reason);
        }
        await WaitForRefusalCountedAsync(controller, relays[0].Name);

        // Kill the relay carrying the pair: traffic moves to the other one, every byte still checked.
        var (dead, alive) = used == $"relay/{relays[0].Id}" ? (relays[0], relays[1]) : (relays[1], relays[0]);
        (dead.Name == "relay-a" ? relayA : relayB).Kill();
        await ExchangeAsync(devicePool, connectorPool, device.Session.Identity!, connectorIdentity, 500, ct);
        Assert.Equal($"relay/{alive.Id}", devicePool.RelayFor(connectorIdentity));

        await stop.CancelAsync();
        await connectorRun.WaitAsync(TimeSpan.FromSeconds(10), CancellationToken.None);
    }

    /// <summary>Sends numbered packets each way and checks that every one arrives once, intact, from the right peer.</summary>
    private static async Task ExchangeAsync(RelayPool a, RelayPool b, string aIdentity, string bIdentity, int count, CancellationToken ct)
    {
        await OneWayAsync(a, b, aIdentity, bIdentity, count, ct);
        await OneWayAsync(b, a, bIdentity, aIdentity, count, ct);
    }

    private static async Task OneWayAsync(RelayPool from, RelayPool to, string fromIdentity, string toIdentity, int count, CancellationToken ct)
    {
        var seen = new HashSet<int>();
        var deadline = DateTime.UtcNow.AddSeconds(30);
        var next = 0;
        // Packets, like UDP, may be dropped while a relay dies; resend the missing ones until all arrived (bounded).
        while (seen.Count < count && DateTime.UtcNow < deadline)
        {
            for (var i = 0; i < count; i++)
            {
                if (!seen.Contains(i))
                {
                    await from.SendAsync(toIdentity, Packet(i), ct);
                }
            }
            using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            try
            {
                while (seen.Count < count)
                {
                    var packet = await to.Packets.ReadAsync(wait.Token);
                    Assert.Equal(fromIdentity, packet.FromPeer);
                    var index = Check(packet.Packet.Span);
                    seen.Add(index);
                }
            }
            catch (OperationCanceledException)
            {
                next++;
            }
        }
        Assert.True(seen.Count == count, $"{count - seen.Count} of {count} packets never arrived after {next} rounds; sender relays {string.Join(",", from.ConnectedRelays)} uses {from.RelayFor(toIdentity)}, receiver {string.Join(",", to.ConnectedRelays)} uses {to.RelayFor(fromIdentity)}; dropped {from.PacketsDropped}/{to.PacketsDropped}");
    }

    private static byte[] Packet(int index)
    {
        var payload = new byte[1200];
        BitConverter.TryWriteBytes(payload, index);
        new Random(index).NextBytes(payload.AsSpan(4, payload.Length - 36));
        SHA256.HashData(payload.AsSpan(0, payload.Length - 32), payload.AsSpan(payload.Length - 32));
        return payload;
    }

    private static int Check(ReadOnlySpan<byte> packet)
    {
        Assert.Equal(1200, packet.Length);
        Assert.True(SHA256.HashData(packet[..^32]).AsSpan().SequenceEqual(packet[^32..]), "packet corrupted in transit");
        return BitConverter.ToInt32(packet);
    }

    private static async Task<FerryProcess> StartRelayAsync(ControllerInstance controller, string name, string dir)
    {
        var stdout = await controller.AdminAsync("relay", "provision", "--name", name, "--json");
        var path = Path.Combine(dir, $"{name}.tokens.json");
        await File.WriteAllTextAsync(path, stdout);
        var relay = FerryProcess.Start(name, ["relay", "--tokens", path, "--listen", "127.0.0.1:0", "--stun", "127.0.0.1:0"]);
        await relay.WaitForLineAsync(l => l.Contains("Relay links accepted on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "relay listening");
        return relay;
    }

    private static async Task WaitForRelaysOnlineAsync(ControllerInstance controller, int count)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (DateTime.UtcNow < deadline)
        {
            var relays = await controller.AdminJsonAsync<RelayView[]>("relay", "list");
            if (relays.Count(r => r.State == "online" && r.TcpEndpoints.Length > 0 && r.StunEndpoints.Length > 0) == count)
            {
                return;
            }
            await Task.Delay(100);
        }
        throw new Xunit.Sdk.XunitException("relays never came online with endpoints");
    }

    private static async Task WaitForRefusalCountedAsync(ControllerInstance controller, string relay)
    {
        var deadline = DateTime.UtcNow.AddSeconds(15);
        while (DateTime.UtcNow < deadline)
        {
            var view = await controller.AdminJsonAsync<RelayView>("relay", "show", relay);
            if (view.Refused > 0)
            {
                return;
            }
            await Task.Delay(200);
        }
        throw new Xunit.Sdk.XunitException($"relay {relay} never reported the refused bind");
    }
}

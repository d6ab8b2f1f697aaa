using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Ferry.Relay.Tests.Support;
using Microsoft.Extensions.Time.Testing;

namespace Ferry.Relay.Tests;

/// <summary>Keepalives, idle timeouts and ticket expiry on a fake clock: no test here waits for wall-clock time to pass.</summary>
public sealed class KeepaliveTests
{
    [Fact]
    public async Task RelayClosesALinkThatStaysSilentPastTheIdleTimeout()
    {
        await using var h = new RelayHarness();
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var relay = await h.StartRelayAsync("relay/rl_eu1", clock, idleTimeout: TimeSpan.FromSeconds(30));
        await using var raw = await RawRelayClient.ConnectAsync(relay.BoundEndpoints[0], h.CertificateFor("device/dv_quiet"));
        await Bounded.UntilAsync(() => relay.GetCounters().PeersConnected == 1, "link registered");

        clock.Advance(TimeSpan.FromSeconds(29));
        Assert.Equal(0, relay.GetCounters().RefusedFor(RelayRefusal.IdleTimeout));
        clock.Advance(TimeSpan.FromSeconds(2));

        var error = await raw.ReadUntilAsync(RelayFrameType.Error);
        Assert.NotNull(error);
        Assert.True(RelayFrameCodec.TryReadError(new ReadOnlySequence<byte>(error), out var reason, out var message));
        Assert.Equal(RelayRefusal.IdleTimeout, reason);
        Bounded.Log($"relay said: {message}");
        Assert.Null(await raw.ReadFrameAsync());
        Assert.Equal(1, relay.GetCounters().RefusedFor(RelayRefusal.IdleTimeout));
        await Bounded.UntilAsync(() => relay.GetCounters().PeersConnected == 0, "link removed");
    }

    [Fact]
    public async Task PeerPingsKeepAnOtherwiseIdleLinkAlive()
    {
        await using var h = new RelayHarness();
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var relay = await h.StartRelayAsync("relay/rl_eu1", clock, idleTimeout: TimeSpan.FromSeconds(30));
        var link = await h.LinkAsync(relay, "device/dv_1", h.LinkOptions("device/dv_1", clock, keepalive: TimeSpan.FromSeconds(10), idle: TimeSpan.FromSeconds(45)));

        // Two minutes of fake time in keepalive steps, each step waiting until the relay has answered that step's ping.
        for (var step = 0; step < 12; step++)
        {
            var pongsBefore = relay.GetCounters().BytesOut;
            clock.Advance(TimeSpan.FromSeconds(10));
            await Bounded.UntilAsync(() => relay.GetCounters().BytesOut > pongsBefore, $"pong for keepalive {step}");
        }

        Assert.Equal(RelayLinkState.Open, link.State);
        Assert.Equal(1, relay.GetCounters().PeersConnected);
        Assert.Equal(0, relay.GetCounters().RefusedFor(RelayRefusal.IdleTimeout));
    }

    [Fact]
    public async Task PeerDeclaresASilentRelayDeadWithAClearReason()
    {
        await using var h = new RelayHarness();
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var silent = SilentRelay.Start(h.CertificateFor("relay/rl_mute"));
        var options = h.LinkOptions("device/dv_1", clock, keepalive: TimeSpan.FromSeconds(10), idle: TimeSpan.FromSeconds(25));
        var link = h.Own(await RelayLink.ConnectAsync(new RelayEndpoint("127.0.0.1", silent.Port), options, null, Bounded.Ct).Within());

        clock.Advance(TimeSpan.FromSeconds(31));

        var closure = await link.Completion.Within();
        Assert.Equal(RelayLinkState.Faulted, closure.State);
        Assert.Equal(RelayRefusal.IdleTimeout, closure.Reason);
        Assert.Contains("relay/rl_mute", closure.Message, StringComparison.Ordinal);
        Assert.False(await link.SendAsync("connector/cn_1", new byte[] { 1 }, Bounded.Ct).Within());
    }

    [Fact]
    public async Task ForwardingStopsWhenTheTicketExpiresAndResumesWithAFreshOne()
    {
        await using var h = new RelayHarness();
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var relay = await h.StartRelayAsync("relay/rl_eu1", clock, idleTimeout: TimeSpan.FromHours(1));
        var a = await h.LinkAsync(relay, "device/dv_a");
        var b = await h.LinkAsync(relay, "connector/cn_b");
        var ticket = RelayTicket.Issue(h.Pki.CaKey, "device/dv_a", "connector/cn_b", clock.GetUtcNow().AddSeconds(60)).Text;
        await a.BindAsync(ticket, Bounded.Ct).Within();
        await b.BindAsync(ticket, Bounded.Ct).Within();
        Assert.True(await a.SendAsync("connector/cn_b", new byte[] { 1 }, Bounded.Ct).Within());
        Assert.Equal(new byte[] { 1 }, (await b.Packets.ReadAsync(Bounded.Ct).AsTask().Within()).Packet.ToArray());

        clock.Advance(TimeSpan.FromSeconds(66));
        Assert.True(await a.SendAsync("connector/cn_b", new byte[] { 2 }, Bounded.Ct).Within());
        await Bounded.UntilAsync(() => relay.GetCounters().RefusedFor(RelayRefusal.TicketExpired) == 1, "expired ticket counted");

        // Renewal: the same pair binds a new ticket and keeps its channel.
        var renewed = RelayTicket.Issue(h.Pki.CaKey, "connector/cn_b", "device/dv_a", clock.GetUtcNow().AddSeconds(60)).Text;
        var before = a.Bindings.Single().Channel;
        Assert.Equal(before, (await a.BindAsync(renewed, Bounded.Ct).Within()).Channel);
        await b.BindAsync(renewed, Bounded.Ct).Within();
        Assert.True(await a.SendAsync("connector/cn_b", new byte[] { 3 }, Bounded.Ct).Within());
        Assert.Equal(new byte[] { 3 }, (await b.Packets.ReadAsync(Bounded.Ct).AsTask().Within()).Packet.ToArray());
    }

    /// <summary>A relay that completes TLS and answers exactly one ping (so the link opens), then never sends again.</summary>
    private sealed class SilentRelay : IAsyncDisposable
    {
        private readonly TcpListener _listener;
        private readonly X509Certificate2 _certificate;
        private readonly CancellationTokenSource _stop = new();
        private Task _serve = Task.CompletedTask;

        private SilentRelay(X509Certificate2 certificate)
        {
            _certificate = certificate;
            _listener = new TcpListener(IPAddress.Loopback, 0);
        }

        public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

        public static SilentRelay Start(X509Certificate2 certificate)
        {
            var relay = new SilentRelay(certificate);
            relay._listener.Start();
            relay._serve = relay.ServeAsync();
            return relay;
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            _listener.Stop();
            await _serve.ContinueWith(_ => { }, TaskScheduler.Default).WaitAsync(Bounded.Timeout);
            _stop.Dispose();
        }

        private async Task ServeAsync()
        {
            using var socket = await _listener.AcceptSocketAsync(_stop.Token);
            await using var stream = new SslStream(new NetworkStream(socket));
            await stream.AuthenticateAsServerAsync(
                new SslServerAuthenticationOptions
                {
                    ServerCertificate = _certificate,
                    ClientCertificateRequired = true,
                    EnabledSslProtocols = SslProtocols.Tls13,
                    ApplicationProtocols = [new SslApplicationProtocol("ferry-relay/1")],
                    RemoteCertificateValidationCallback = (_, _, _, _) => true,
                },
                _stop.Token);
            var reader = PipeReader.Create(stream);
            var answered = false;
            for (var reads = 0; reads < 10_000; reads++)
            {
                var result = await reader.ReadAsync(_stop.Token);
                var buffer = result.Buffer;
                while (RelayFrameCodec.TryRead(ref buffer, out var frame, out _) == RelayFrameStatus.Frame)
                {
                    if (!answered && frame.Type == RelayFrameType.Ping && RelayFrameCodec.TryReadPing(frame.Payload, out var value))
                    {
                        var pong = new byte[RelayFrameCodec.PingLength];
                        RelayFrameCodec.WritePing(pong, RelayFrameType.Pong, value);
                        await stream.WriteAsync(pong, _stop.Token);
                        answered = true;
                    }
                }

                reader.AdvanceTo(buffer.Start, buffer.End);
                if (result.IsCompleted)
                {
                    return;
                }
            }
        }
    }
}

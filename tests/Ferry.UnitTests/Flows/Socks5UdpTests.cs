using System.Net;
using System.Net.Sockets;
using Ferry.Client.Access;
using Ferry.Connector.Flows;
using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.UnitTests.Flows;

/// <summary>SOCKS5 UDP ASSOCIATE and UDP port forwards on real loopback sockets, carried by a real <see cref="FlowHandler"/> over in-memory flows.</summary>
public sealed class Socks5UdpTests : FlowTestBase
{
    private const string Me = "device/dv_me";

    private sealed class Setup : IAsyncDisposable
    {
        public UdpEchoServer Echo { get; } = new();

        /// <summary>An echo server on a port no resource allows.</summary>
        public UdpEchoServer Outside { get; } = new();

        public InMemoryOpener Opener { get; private set; } = null!;

        public ClientRoutes Routes { get; private set; } = null!;

        public Socks5Server Socks { get; private set; } = null!;

        public static async Task<Setup> StartAsync(CancellationToken ct, TimeSpan? idle = null)
        {
            var setup = new Setup();
            var loopback = new ResourceGrant("rs_lo", "loopback", "nw_1", "127.0.0.1", "none", setup.Echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture));
            var apps = new ResourceGrant("rs_apps", "apps", "nw_1", "*.test", "none", "all");
            var access = new AccessTable([new(Me, loopback), new(Me, apps)]);
            var handler = new FlowHandler(new StubResolver((_, _) => Task.FromResult(NameResolution.Found([IPAddress.Loopback]))));
            setup.Routes = new ClientRoutes([loopback, apps]);
            setup.Opener = new InMemoryOpener(handler, Me, () => access);
            setup.Socks = new Socks5Server(setup.Routes, setup.Opener, new LoopbackProxyOptions { UdpIdleTimeout = idle ?? TimeSpan.FromSeconds(60) });
            await setup.Socks.StartAsync(ct);
            return setup;
        }

        public async ValueTask DisposeAsync()
        {
            await Socks.DisposeAsync();
            await Opener.DisposeAsync();
            await Echo.DisposeAsync();
            await Outside.DisposeAsync();
        }
    }

    /// <summary>Runs UDP ASSOCIATE on a new control connection; returns it and the relay endpoint the reply names.</summary>
    private async Task<(Socket Control, IPEndPoint Relay)> AssociateAsync(Setup setup)
    {
        var control = await FlowTestSupport.ConnectAsync(setup.Socks.LocalEndPoint, Token);
        var stream = new NetworkStream(control);
        await stream.WriteAsync(new byte[] { 5, 1, 0 }, Token);
        var method = new byte[2];
        await stream.ReadExactlyAsync(method, Token).AsTask().WaitAsync(FlowTestSupport.Bound, Token);
        await stream.WriteAsync(new byte[] { 5, 3, 0, 1, 0, 0, 0, 0, 0, 0 }, Token);
        var reply = new byte[10];
        await stream.ReadExactlyAsync(reply, Token).AsTask().WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal(new byte[] { 5, 0, 0, 1, 127, 0, 0, 1 }, reply[..8]);
        return (control, new IPEndPoint(IPAddress.Loopback, (reply[8] << 8) | reply[9]));
    }

    private static Socket UdpClient()
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return socket;
    }

    private static byte[] Wrap(string host, int port, ReadOnlySpan<byte> payload)
    {
        var datagram = new byte[Socks5UdpHeader.Length(host) + payload.Length];
        var header = Socks5UdpHeader.Write(datagram, host, port);
        payload.CopyTo(datagram.AsSpan(header));
        return datagram;
    }

    /// <summary>Sends until the echo of <paramref name="payload"/> comes back (loopback UDP may drop; bounded to 5 tries of 2 s); returns the reply's named destination.</summary>
    private async Task<(string Host, int Port)> RoundTripAsync(Socket udp, IPEndPoint relay, string host, int port, byte[] payload)
    {
        var buffer = new byte[70_000];
        for (var attempt = 0; attempt < 5; attempt++)
        {
            await udp.SendToAsync(Wrap(host, port, payload), SocketFlags.None, relay, Token);
            using var wait = CancellationTokenSource.CreateLinkedTokenSource(Token);
            wait.CancelAfter(TimeSpan.FromSeconds(2));
            try
            {
                while (true)
                {
                    var length = await udp.ReceiveAsync(buffer, SocketFlags.None, wait.Token);
                    Assert.True(Socks5UdpHeader.TryParse(buffer.AsSpan(0, length), out var from, out var fromPort, out var header, out var error), error);
                    if (buffer.AsSpan(header, length - header).SequenceEqual(payload))
                    {
                        return (from, fromPort);
                    }
                }
            }
            catch (OperationCanceledException) when (!Token.IsCancellationRequested)
            {
            }
        }
        throw new TimeoutException($"the echo of a {payload.Length}-byte payload to {host}:{port} never came back");
    }

    /// <summary>True when a datagram arrives within <paramref name="within"/>.</summary>
    private async Task<bool> AnythingArrivesAsync(Socket udp, TimeSpan within)
    {
        using var wait = CancellationTokenSource.CreateLinkedTokenSource(Token);
        wait.CancelAfter(within);
        try
        {
            await udp.ReceiveAsync(new byte[70_000], SocketFlags.None, wait.Token);
            return true;
        }
        catch (OperationCanceledException) when (!Token.IsCancellationRequested)
        {
            return false;
        }
    }

    [Fact]
    public async Task Udp_associate_relays_many_datagrams_intact_and_names_each_destination_in_replies()
    {
        await using var setup = await Setup.StartAsync(Token);
        var (control, relay) = await AssociateAsync(setup);
        using (control)
        using (var udp = UdpClient())
        {
            for (var i = 0; i < 100; i++)
            {
                var payload = FlowTestSupport.RandomBytes(1 + (i * 13), seed: i);
                Assert.Equal(("127.0.0.1", setup.Echo.Port), await RoundTripAsync(udp, relay, "127.0.0.1", setup.Echo.Port, payload));
            }
            // A name goes to the connector to resolve, and the reply names it as the application did; a large payload takes the stream.
            var large = FlowTestSupport.RandomBytes(4000, seed: 7);
            Assert.Equal(("echo.test", setup.Echo.Port), await RoundTripAsync(udp, relay, "echo.test", setup.Echo.Port, large));
            Assert.Equal(2, setup.Opener.LiveUdpFlows);
        }
        // Closing the control connection ends the association and its flows.
        await setup.Opener.AllServed.WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal(0, setup.Opener.LiveUdpFlows);
    }

    [Fact]
    public async Task Fragments_strangers_and_ungranted_destinations_are_dropped_and_the_rest_goes_on()
    {
        await using var setup = await Setup.StartAsync(Token);
        var (control, relay) = await AssociateAsync(setup);
        using (control)
        using (var udp = UdpClient())
        using (var stranger = UdpClient())
        {
            await RoundTripAsync(udp, relay, "127.0.0.1", setup.Echo.Port, "first"u8.ToArray());

            var fragment = Wrap("127.0.0.1", setup.Echo.Port, "fragment"u8);
            fragment[2] = 1;
            await udp.SendToAsync(fragment, SocketFlags.None, relay, Token);
            // Same client IP, another port: the first datagram fixed the port.
            await stranger.SendToAsync(Wrap("127.0.0.1", setup.Echo.Port, "stranger"u8), SocketFlags.None, relay, Token);
            // The echo's host, but a port no resource allows: refused on the client, never sent.
            await udp.SendToAsync(Wrap("127.0.0.1", setup.Outside.Port, "outside"u8), SocketFlags.None, relay, Token);

            Assert.False(await AnythingArrivesAsync(udp, TimeSpan.FromMilliseconds(500)));
            Assert.False(await AnythingArrivesAsync(stranger, TimeSpan.FromMilliseconds(100)));
            Assert.Equal(0, setup.Outside.Received);
            Assert.Equal(1, setup.Echo.Received);
            await RoundTripAsync(udp, relay, "127.0.0.1", setup.Echo.Port, "still here"u8.ToArray());
        }
    }

    [Fact]
    public async Task A_udp_forward_keeps_one_flow_per_source_and_closes_idle_ones()
    {
        await using var setup = await Setup.StartAsync(Token);
        await using var forward = new UdpPortForward("127.0.0.1", setup.Echo.Port, setup.Routes, setup.Opener, new LoopbackProxyOptions { UdpIdleTimeout = TimeSpan.FromMilliseconds(1500) });
        await forward.StartAsync(Token);
        Assert.Equal($"forward 127.0.0.1:{setup.Echo.Port}/udp", forward.Kind);
        using var a = UdpClient();
        using var b = UdpClient();
        var buffer = new byte[70_000];
        foreach (var (socket, i) in new[] { (a, 1), (b, 2), (a, 3), (b, 4) })
        {
            var payload = FlowTestSupport.RandomBytes(i == 4 ? 5000 : 100 * i, seed: i);
            await socket.SendToAsync(payload, SocketFlags.None, forward.LocalEndPoint, Token);
            var length = await socket.ReceiveAsync(buffer, SocketFlags.None, Token).AsTask().WaitAsync(FlowTestSupport.Bound, Token);
            Assert.Equal(payload, buffer[..length]);
        }
        Assert.Equal(2, setup.Opener.OpenCount);

        // Idle flows close on both ends; the next datagram opens a new one.
        await setup.Opener.AllServed.WaitAsync(FlowTestSupport.Bound, Token);
        await a.SendToAsync("again"u8.ToArray(), SocketFlags.None, forward.LocalEndPoint, Token);
        var again = await a.ReceiveAsync(buffer, SocketFlags.None, Token).AsTask().WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal("again"u8.ToArray(), buffer[..again]);
        Assert.Equal(3, setup.Opener.OpenCount);
    }

    [Fact]
    public void A_udp_forward_to_an_invalid_destination_says_why()
    {
        var e = Assert.Throws<ArgumentException>(() => new UdpPortForward("bad host", 53, new ClientRoutes([]), new InMemoryOpener(new FlowHandler(), Me, () => AccessTable.Empty)));
        Assert.Contains("cannot forward UDP to bad host:53", e.Message, StringComparison.Ordinal);
    }
}

using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Ferry.Client.Access;
using Ferry.Core.Flows;

namespace Ferry.UnitTests.Flows;

public sealed class ProxyEndToEndTests : FlowTestBase
{
    private static ValueTask Shutdown(Stream stream) => FlowCopier.ShutdownSocketSend(stream);

    [Fact]
    public async Task Socks5_by_name_carries_4_MiB_intact()
    {
        await using var harness = await ProxyHarness.StartAsync(Token);
        using var socket = await FlowTestSupport.ConnectAsync(harness.Socks.LocalEndPoint, Token);
        await using var stream = new NetworkStream(socket);

        Assert.Equal(0x00, await FlowTestSupport.Socks5ConnectAsync(stream, "echo.test", harness.Echo.Port, Token));
        var payload = FlowTestSupport.RandomBytes(4 * 1024 * 1024, seed: 1);
        var echoed = await FlowTestSupport.ExchangeAsync(stream, Shutdown, payload, Token).WaitAsync(TimeSpan.FromSeconds(30), Token);

        Assert.Equal(SHA256.HashData(payload), SHA256.HashData(echoed));
    }

    [Fact]
    public async Task Socks5_by_IPv4_keeps_receiving_after_the_client_half_closes()
    {
        await using var harness = await ProxyHarness.StartAsync(Token);
        using var socket = await FlowTestSupport.ConnectAsync(harness.Socks.LocalEndPoint, Token);
        await using var stream = new NetworkStream(socket);

        Assert.Equal(0x00, await FlowTestSupport.Socks5ConnectAsync(stream, "127.0.0.1", harness.Hash.Port, Token));
        var payload = FlowTestSupport.RandomBytes(1024 * 1024, seed: 2);
        await stream.WriteAsync(payload, Token);
        socket.Shutdown(SocketShutdown.Send);

        // The server answers only after it has read our end: the half-close crossed both flow legs, and its reply still comes back.
        var answer = await FlowTestSupport.ReadToEndAsync(stream, Token);
        Assert.Equal(SHA256.HashData(payload), answer);
    }

    [Fact]
    public async Task Socks5_by_IPv6_reaches_an_IPv6_resource()
    {
        await using var harness = await ProxyHarness.StartAsync(Token);
        Assert.SkipWhen(harness.EchoV6 is null, "this host has no IPv6 loopback");
        using var socket = await FlowTestSupport.ConnectAsync(harness.Socks.LocalEndPoint, Token);
        await using var stream = new NetworkStream(socket);

        Assert.Equal(0x00, await FlowTestSupport.Socks5ConnectAsync(stream, "::1", harness.EchoV6!.Port, Token));
        var payload = Encoding.ASCII.GetBytes("over v6");
        Assert.Equal(payload, await FlowTestSupport.ExchangeAsync(stream, Shutdown, payload, Token));
    }

    public static TheoryData<string, string, byte, int, string> Refusals => new()
    {
        { "not granted", "secret.test:80", 0x02, 403, "device/dv_me is not granted resource 'secret'" },
        { "port", "narrow.test:80", 0x02, 403, "allows TCP ports 1, not 80" },
        { "gone at the connector", "gone.example:80", 0x02, 403, "no resource covers the name 'gone.example'" },
        { "no route on the client", "nothing.example:80", 0x02, 403, "split tunnelling is off" },
        { "raw IP without a CIDR", "10.99.0.1:80", 0x02, 403, "no IP or CIDR resource covers 10.99.0.1" },
        { "name not found", "missing.test:80", 0x04, 502, "NXDOMAIN" },
        { "unreachable", "dns-down.test:80", 0x04, 502, "could not be asked" },
        { "refused", "127.0.0.1:{closed}", 0x05, 502, "connection refused" },
        { "timeout", "slow.test:80", 0x06, 504, "took longer than 0.5 s" },
    };

    [Theory]
    [MemberData(nameof(Refusals))]
    public async Task Socks5_maps_each_refusal_to_its_RFC_1928_code(string why, string target, byte code, int httpStatus, string reason)
    {
        _ = (why, httpStatus, reason);
        await using var harness = await ProxyHarness.StartAsync(Token);
        var (host, port) = Split(target, harness);
        using var socket = await FlowTestSupport.ConnectAsync(harness.Socks.LocalEndPoint, Token);
        await using var stream = new NetworkStream(socket);

        Assert.Equal(code, await FlowTestSupport.Socks5ConnectAsync(stream, host, port, Token));
        Assert.Empty(await FlowTestSupport.ReadToEndAsync(stream, Token));
    }

    [Theory]
    [MemberData(nameof(Refusals))]
    public async Task Http_connect_maps_each_refusal_to_a_status_with_the_reason(string why, string target, byte code, int httpStatus, string reason)
    {
        _ = (why, code);
        await using var harness = await ProxyHarness.StartAsync(Token);
        var (host, port) = Split(target, harness);
        using var socket = await FlowTestSupport.ConnectAsync(harness.HttpProxy.LocalEndPoint, Token);
        await using var stream = new NetworkStream(socket);

        var (status, _, body) = await FlowTestSupport.HttpConnectAsync(stream, FlowHeader.FormatHostPort(host, port), Token);

        Assert.Equal(httpStatus, status);
        Assert.Contains(reason, body, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(2, 0x07)]
    [InlineData(9, 0x07)]
    public async Task Socks5_answers_command_not_supported_for_BIND_and_unknown_commands(byte command, byte code)
    {
        await using var harness = await ProxyHarness.StartAsync(Token);
        using var socket = await FlowTestSupport.ConnectAsync(harness.Socks.LocalEndPoint, Token);
        await using var stream = new NetworkStream(socket);
        Assert.Equal(code, await FlowTestSupport.Socks5ConnectAsync(stream, "127.0.0.1", 53, Token, command));
    }

    [Fact]
    public async Task Socks5_refuses_unknown_address_types_and_authentication_it_cannot_do()
    {
        await using var harness = await ProxyHarness.StartAsync(Token);
        using (var socket = await FlowTestSupport.ConnectAsync(harness.Socks.LocalEndPoint, Token))
        {
            await using var stream = new NetworkStream(socket);
            await stream.WriteAsync(new byte[] { 5, 1, 0, 5, 1, 0, 9, 0, 80 }, Token);
            var reply = new byte[12];
            await stream.ReadExactlyAsync(reply, Token).AsTask().WaitAsync(FlowTestSupport.Bound, Token);
            Assert.Equal(new byte[] { 5, 0, 5, 0x08 }, reply[..4]);
        }
        using (var socket = await FlowTestSupport.ConnectAsync(harness.Socks.LocalEndPoint, Token))
        {
            await using var stream = new NetworkStream(socket);
            await stream.WriteAsync(new byte[] { 5, 1, 2 }, Token);
            Assert.Equal(new byte[] { 5, 0xFF }, await FlowTestSupport.ReadToEndAsync(stream, Token));
        }
    }

    [Fact]
    public async Task Http_connect_tunnels_a_request_to_a_web_server_by_name()
    {
        await using var harness = await ProxyHarness.StartAsync(Token);
        using var socket = await FlowTestSupport.ConnectAsync(harness.HttpProxy.LocalEndPoint, Token);
        await using var stream = new NetworkStream(socket);

        var (status, head, _) = await FlowTestSupport.HttpConnectAsync(stream, $"web.test:{harness.Web.Port}", Token);
        Assert.Equal(200, status);
        Assert.DoesNotContain("Content-Length", head, StringComparison.OrdinalIgnoreCase);
        await stream.WriteAsync("GET /hello HTTP/1.1\r\nHost: web.test\r\n\r\n"u8.ToArray(), Token);
        var response = Encoding.ASCII.GetString(await FlowTestSupport.ReadToEndAsync(stream, Token));
        Assert.StartsWith("HTTP/1.1 200 OK", response, StringComparison.Ordinal);
        Assert.Contains("X-Request-Line: GET /hello HTTP/1.1", response, StringComparison.Ordinal);
        Assert.EndsWith("hello through ferry", response, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Http_connect_carries_3_MiB_and_bytes_sent_with_the_request_across_a_half_close()
    {
        await using var harness = await ProxyHarness.StartAsync(Token);
        using var socket = await FlowTestSupport.ConnectAsync(harness.HttpProxy.LocalEndPoint, Token);
        await using var stream = new NetworkStream(socket);

        // The first bytes ride in the same write as the request, as a TLS client that does not wait for "200" would send them.
        var payload = FlowTestSupport.RandomBytes(3 * 1024 * 1024, seed: 3);
        var request = Encoding.ASCII.GetBytes($"CONNECT 127.0.0.1:{harness.Hash.Port} HTTP/1.1\r\n\r\n");
        await stream.WriteAsync(request.Concat(payload[..100]).ToArray(), Token);
        var head = await FlowTestSupport.ReadHeadAsync(stream, Token);
        Assert.StartsWith("HTTP/1.1 200", head, StringComparison.Ordinal);
        await stream.WriteAsync(payload.AsMemory(100), Token);
        socket.Shutdown(SocketShutdown.Send);

        Assert.Equal(SHA256.HashData(payload), await FlowTestSupport.ReadToEndAsync(stream, Token));
    }

    [Fact]
    public async Task Http_proxy_answers_other_methods_405_with_the_reason()
    {
        await using var harness = await ProxyHarness.StartAsync(Token);
        using var socket = await FlowTestSupport.ConnectAsync(harness.HttpProxy.LocalEndPoint, Token);
        await using var stream = new NetworkStream(socket);

        var (status, head, body) = await FlowTestSupport.HttpConnectAsync(stream, "http://web.test/", Token, method: "GET");

        Assert.Equal(405, status);
        Assert.Contains("Allow: CONNECT", head, StringComparison.Ordinal);
        Assert.Contains("only tunnels with CONNECT", body, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("web.test", "not 'host:port'")]
    [InlineData("web.test:0", "no valid port")]
    [InlineData("[::1:80", "not '[ipv6]:port'")]
    [InlineData("we b.test:80", "not 'METHOD target HTTP/1.1'")]
    public async Task Http_connect_refuses_malformed_targets_with_400(string target, string reason)
    {
        await using var harness = await ProxyHarness.StartAsync(Token);
        using var socket = await FlowTestSupport.ConnectAsync(harness.HttpProxy.LocalEndPoint, Token);
        await using var stream = new NetworkStream(socket);
        var (status, _, body) = await FlowTestSupport.HttpConnectAsync(stream, target, Token);
        Assert.Equal(400, status);
        Assert.Contains(reason, body, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Revoking_a_live_flow_closes_the_application_connection_within_2_s()
    {
        await using var harness = await ProxyHarness.StartAsync(Token);
        using var socket = await FlowTestSupport.ConnectAsync(harness.Socks.LocalEndPoint, Token);
        await using var stream = new NetworkStream(socket);
        Assert.Equal(0x00, await FlowTestSupport.Socks5ConnectAsync(stream, "echo.test", harness.Echo.Port, Token));
        await stream.WriteAsync("ping"u8.ToArray(), Token);
        var pong = new byte[4];
        await stream.ReadExactlyAsync(pong, Token).AsTask().WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal("ping"u8.ToArray(), pong);

        await harness.Opener.Opened.Single().CancelAsync();

        var closed = Task.Run(async () =>
        {
            try
            {
                return await stream.ReadAsync(new byte[16], Token);
            }
            catch (IOException)
            {
                return 0;
            }
        }, Token);
        Assert.Equal(0, await closed.WaitAsync(TimeSpan.FromSeconds(2), Token));
    }

    [Fact]
    public async Task Port_forward_carries_each_connection_to_its_destination_and_closes_refused_ones()
    {
        await using var harness = await ProxyHarness.StartAsync(Token);
        await using var forward = new PortForward("echo.test", harness.Echo.Port, harness.Routes, harness.Opener);
        await using var refused = new PortForward("secret.test", 80, harness.Routes, harness.Opener);
        await forward.StartAsync(Token);
        await refused.StartAsync(Token);

        var flows = Enumerable.Range(0, 8).Select(async i =>
        {
            using var socket = await FlowTestSupport.ConnectAsync(forward.LocalEndPoint, Token);
            await using var stream = new NetworkStream(socket);
            var payload = FlowTestSupport.RandomBytes(64 * 1024, seed: 100 + i);
            Assert.Equal(payload, await FlowTestSupport.ExchangeAsync(stream, Shutdown, payload, Token));
        });
        await Task.WhenAll(flows).WaitAsync(TimeSpan.FromSeconds(20), Token);

        using var denied = await FlowTestSupport.ConnectAsync(refused.LocalEndPoint, Token);
        await using var deniedStream = new NetworkStream(denied);
        Assert.Empty(await FlowTestSupport.ReadToEndAsync(deniedStream, Token));
    }

    [Fact]
    public async Task Proxies_listen_on_loopback_only_and_stop_cleanly()
    {
        await using var harness = await ProxyHarness.StartAsync(Token);
        Assert.Equal(IPAddress.Loopback, harness.Socks.LocalEndPoint.Address);
        Assert.Equal(IPAddress.Loopback, harness.HttpProxy.LocalEndPoint.Address);

        using var socket = await FlowTestSupport.ConnectAsync(harness.Socks.LocalEndPoint, Token);
        await using var stream = new NetworkStream(socket);
        Assert.Equal(0x00, await FlowTestSupport.Socks5ConnectAsync(stream, "echo.test", harness.Echo.Port, Token));

        await harness.Socks.StopAsync().WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal(0, harness.Socks.ActiveConnections);
        Assert.Empty(await FlowTestSupport.ReadToEndAsync(stream, Token));
    }

    [Fact]
    public async Task Socks5_serves_a_hundred_connections_at_once()
    {
        await using var harness = await ProxyHarness.StartAsync(Token);
        var flows = Enumerable.Range(0, 100).Select(i => Task.Run(async () =>
        {
            using var socket = await FlowTestSupport.ConnectAsync(harness.Socks.LocalEndPoint, Token);
            await using var stream = new NetworkStream(socket);
            Assert.Equal(0x00, await FlowTestSupport.Socks5ConnectAsync(stream, i % 2 == 0 ? "echo.test" : "127.0.0.1", harness.Echo.Port, Token));
            var payload = FlowTestSupport.RandomBytes(32 * 1024, seed: 1000 + i);
            Assert.Equal(payload, await FlowTestSupport.ExchangeAsync(stream, Shutdown, payload, Token));
        }, Token));
        await Task.WhenAll(flows).WaitAsync(TimeSpan.FromSeconds(30), Token);
        Assert.Equal(100, harness.Opener.OpenCount);
    }

    [Fact]
    public async Task Split_tunnelling_sends_uncovered_destinations_directly()
    {
        await using var echo = LoopbackServer.Echo();
        await using var opener = new InMemoryOpener(new Ferry.Connector.Flows.FlowHandler(), ProxyHarness.Me, () => AccessTable.Empty);
        var routes = new ClientRoutes([], splitTunnel: true);
        await using var socks = new Socks5Server(routes, opener);
        await socks.StartAsync(Token);

        using var socket = await FlowTestSupport.ConnectAsync(socks.LocalEndPoint, Token);
        await using var stream = new NetworkStream(socket);
        Assert.Equal(0x00, await FlowTestSupport.Socks5ConnectAsync(stream, "127.0.0.1", echo.Port, Token));
        var payload = Encoding.ASCII.GetBytes("straight out");
        Assert.Equal(payload, await FlowTestSupport.ExchangeAsync(stream, Shutdown, payload, Token));
        Assert.Equal(0, opener.OpenCount);

        routes.SplitTunnel = false;
        using var refused = await FlowTestSupport.ConnectAsync(socks.LocalEndPoint, Token);
        await using var refusedStream = new NetworkStream(refused);
        Assert.Equal(0x02, await FlowTestSupport.Socks5ConnectAsync(refusedStream, "127.0.0.1", echo.Port, Token));
    }

    private static (string Host, int Port) Split(string target, ProxyHarness harness)
    {
        var colon = target.LastIndexOf(':');
        var portText = target[(colon + 1)..];
        var port = portText == "{closed}" ? harness.ClosedPort : int.Parse(portText, System.Globalization.CultureInfo.InvariantCulture);
        return (target[..colon], port);
    }
}

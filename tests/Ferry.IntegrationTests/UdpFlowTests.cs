using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>UDP flows through the real client, relay and connector: a UDP port forward, SOCKS5 UDP ASSOCIATE, refusals, the stream fallback and revocation.</summary>
public sealed class UdpFlowTests
{
    private static string Text(int value) => value.ToString(CultureInfo.InvariantCulture);

    private static IPEndPoint Endpoint(string logLine) => IPEndPoint.Parse(logLine[(logLine.LastIndexOf(' ') + 1)..]);

    private static FerryProcess StartClient(ControllerInstance controller, TestDeployment deployment, params string[] listeners)
        => FerryProcess.Start("client",
            ["client", "--state", Path.Combine(deployment.Directory, "client"), "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, .. listeners],
            new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = deployment.ServiceAccountKey });

    private static string Logs(FerryProcess client, TestDeployment deployment) => $"\n--- client:\n{client.Output}\n--- connector:\n{deployment.Connector.Output}";

    [Fact]
    public async Task Dig_resolves_a_name_through_a_udp_forward_to_a_real_dns_server()
    {
        var ct = TestContext.Current.CancellationToken;
        if (!Dnsmasq.IsInstalled || !File.Exists("/usr/bin/dig"))
        {
            Assert.Skip("needs dnsmasq and dig (Debian packages dnsmasq and bind9-dnsutils; scripts/test.sh installs them)");
        }
        await using var dns = await Dnsmasq.StartAsync(new Dictionary<string, string> { ["db.internal"] = "10.9.8.7" }, ct);
        // Straight to dnsmasq first, so a failure below is Ferry's and not the DNS server's.
        var direct = await DigAsync(dns.Port, ct);
        Assert.True(direct.Output == "10.9.8.7", $"dnsmasq itself does not answer: {direct.Output}");

        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await using var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", "none", ct, udpPorts: Text(dns.Port));
        await using var client = StartClient(controller, deployment, "--socks", "off", "--forward", $"0=127.0.0.1:{dns.Port}/udp");
        var forward = Endpoint(await client.WaitForLineAsync(l => l.Contains($"forward 127.0.0.1:{dns.Port}/udp listening on 127.0.0.1:", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "UDP forward listener"));

        // dig asks once and waits 5 s: the forward holds its query while sign-in, the QUIC connection and the flow come up.
        var answer = await DigAsync(forward.Port, ct);
        Assert.True(answer.Output == "10.9.8.7", $"dig exited {answer.Code}: {answer.Output}{Logs(client, deployment)}");
        await deployment.Connector.WaitForLineAsync(l => l.Contains($"UDP 127.0.0.1:{dns.Port} open via 127.0.0.1:{dns.Port}", StringComparison.Ordinal), TimeSpan.FromSeconds(5), "UDP flow open logged");
    }

    [Fact]
    public async Task Socks5_udp_associate_carries_many_datagrams_intact_and_large_ones_over_the_stream()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var echo = new UdpEchoServer();
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await using var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", "none", ct, udpPorts: Text(echo.Port));
        await using var client = StartClient(controller, deployment, "--socks", "0");
        var socks = await SocksReadyAsync(client);

        using var association = await Socks5UdpClient.AssociateAsync(socks, ct);
        // Distinct payloads of many sizes, each checked byte for byte; UDP may lose any of them, so each is sent again a bounded number of times.
        var retried = 0;
        for (var i = 0; i < 300; i++)
        {
            var payload = Payload(i, 8 + (i * 7 % 1100));
            var (reply, attempts) = await association.RoundTripAsync("127.0.0.1", echo.Port, payload, ct);
            Assert.True(reply is not null, $"payload {i} never came back in {attempts} tries{Logs(client, deployment)}");
            Assert.Equal(("127.0.0.1", echo.Port), (reply!.Value.Host, reply.Value.Port));
            retried += attempts - 1;
        }
        TestContext.Current.TestOutputHelper?.WriteLine($"300 datagrams echoed; {retried} resends");

        // Larger than any QUIC datagram on this path (about 1200 bytes): they ride the flow's stream, both ways, intact.
        foreach (var size in new[] { 4000, 30_000 })
        {
            var large = Payload(1000 + size, size);
            var (reply, attempts) = await association.RoundTripAsync("127.0.0.1", echo.Port, large, ct);
            Assert.True(reply is not null, $"the {size}-byte payload never came back in {attempts} tries{Logs(client, deployment)}");
        }
        association.Dispose();
        // The association ends with its control connection: the connector logs the flow closed, with what went over the stream.
        var closed = await deployment.Connector.WaitForLineAsync(l => l.Contains($"UDP 127.0.0.1:{echo.Port} closed", StringComparison.Ordinal), TimeSpan.FromSeconds(10), "UDP flow closed");
        Assert.DoesNotContain(" 0 over the stream", closed, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_datagram_to_a_destination_not_granted_is_not_delivered_and_the_client_says_why()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var echo = new UdpEchoServer();
        await using var outside = new UdpEchoServer();
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await using var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", "none", ct, udpPorts: Text(echo.Port));
        await using var client = StartClient(controller, deployment, "--socks", "0");
        var socks = await SocksReadyAsync(client);

        using var association = await Socks5UdpClient.AssociateAsync(socks, ct);
        var (first, _) = await association.RoundTripAsync("127.0.0.1", echo.Port, Payload(1, 32), ct);
        Assert.True(first is not null, Logs(client, deployment));

        // The resource's address on a port it does not allow, and a name no resource covers.
        await association.SendAsync("127.0.0.1", outside.Port, Payload(2, 32), ct);
        await association.SendAsync("nothing.example", 53, Payload(3, 32), ct);
        var port = await client.WaitForLineAsync(l => l.Contains($"socks5 udp flow to 127.0.0.1:{outside.Port} refused", StringComparison.Ordinal), TimeSpan.FromSeconds(10), "port refusal logged");
        Assert.Contains($"allows UDP ports {echo.Port}, not {outside.Port}", port, StringComparison.Ordinal);
        var name = await client.WaitForLineAsync(l => l.Contains("socks5 udp flow to nothing.example:53 refused", StringComparison.Ordinal), TimeSpan.FromSeconds(10), "name refusal logged");
        Assert.Contains("no resource covers the name 'nothing.example'", name, StringComparison.Ordinal);

        // Nothing but a late duplicate of the first round trip (UDP: a loaded machine may have made it retry) may arrive.
        var quietUntil = DateTime.UtcNow + TimeSpan.FromSeconds(1);
        while (DateTime.UtcNow < quietUntil && await association.ReceiveAsync(quietUntil - DateTime.UtcNow, ct) is { } late)
        {
            Assert.True(late.Port == echo.Port && late.Payload.AsSpan().SequenceEqual(Payload(1, 32)), $"a datagram arrived that policy refused: from port {late.Port}, {Convert.ToHexString(late.Payload)}");
        }
        Assert.Equal(0, outside.Received);
        Assert.DoesNotContain($"127.0.0.1:{outside.Port}", deployment.Connector.Output, StringComparison.Ordinal);
        // The association itself goes on.
        var (after, _) = await association.RoundTripAsync("127.0.0.1", echo.Port, Payload(4, 32), ct);
        Assert.True(after is not null, Logs(client, deployment));
    }

    [Fact]
    public async Task Revoking_the_grant_ends_a_live_udp_flow_within_two_seconds()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var echo = new UdpEchoServer();
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await using var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", "none", ct, udpPorts: Text(echo.Port));
        await using var client = StartClient(controller, deployment, "--socks", "off", "--forward", $"0=127.0.0.1:{echo.Port}/udp");
        var forward = Endpoint(await client.WaitForLineAsync(l => l.Contains($"forward 127.0.0.1:{echo.Port}/udp listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "UDP forward listener"));
        await client.WaitForLineAsync(l => l.Contains("Resources granted now: 1", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "grant");

        using var udp = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        udp.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var buffer = new byte[2048];
        var echoed = false;
        for (var attempt = 0; attempt < 5 && !echoed; attempt++)
        {
            await udp.SendToAsync("still here?"u8.ToArray(), SocketFlags.None, forward, ct);
            using var wait = CancellationTokenSource.CreateLinkedTokenSource(ct);
            wait.CancelAfter(TimeSpan.FromSeconds(5));
            try
            {
                echoed = await udp.ReceiveAsync(buffer, SocketFlags.None, wait.Token) == 11;
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
            }
        }
        Assert.True(echoed, $"the forward never echoed{Logs(client, deployment)}");

        var policy = (await controller.AdminJsonAsync<JsonElement[]>("policy", "list")).Single().GetProperty("id").GetString()!;
        var revokedAt = Stopwatch.StartNew();
        await controller.DeleteAsync("/api/v1/policies/" + policy);
        var line = await client.WaitForLineAsync(l => l.Contains($"flow to 127.0.0.1:{echo.Port} from", StringComparison.Ordinal) && l.Contains("closed", StringComparison.Ordinal),
            TimeSpan.FromSeconds(5), "the UDP flow's end");
        Assert.True(revokedAt.Elapsed < TimeSpan.FromSeconds(2), $"the UDP flow ended {revokedAt.Elapsed.TotalMilliseconds:0} ms after the revocation");
        Assert.Contains("Denied", line, StringComparison.Ordinal);
        Assert.Contains("revoked", line, StringComparison.Ordinal);
    }

    private static byte[] Payload(int index, int length)
    {
        var bytes = new byte[length];
        new Random(index).NextBytes(bytes);
        BinaryPrimitives.WriteInt32BigEndian(bytes, index);
        return bytes;
    }

    private static async Task<(int Code, string Output)> DigAsync(int port, CancellationToken ct)
    {
        var info = new ProcessStartInfo("dig") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in new[] { "@127.0.0.1", "-p", Text(port), "db.internal", "+short", "+tries=1", "+time=5" })
        {
            info.ArgumentList.Add(arg);
        }
        using var dig = Process.Start(info)!;
        try
        {
            var stdout = dig.StandardOutput.ReadToEndAsync(ct);
            var stderr = dig.StandardError.ReadToEndAsync(ct);
            await dig.WaitForExitAsync(ct).WaitAsync(TimeSpan.FromSeconds(15), ct);
            return (dig.ExitCode, ((await stdout) + (await stderr)).Trim());
        }
        finally
        {
            if (!dig.HasExited)
            {
                dig.Kill();
            }
        }
    }

    /// <summary>A minimal SOCKS5 UDP client (RFC 1928 section 7), written here independently of Ferry's own codec.</summary>
    private sealed class Socks5UdpClient : IDisposable
    {
        private readonly TcpClient _control;
        private readonly Socket _udp;
        private readonly IPEndPoint _relay;

        private Socks5UdpClient(TcpClient control, Socket udp, IPEndPoint relay)
        {
            _control = control;
            _udp = udp;
            _relay = relay;
        }

        public static async Task<Socks5UdpClient> AssociateAsync(IPEndPoint socks, CancellationToken ct)
        {
            var control = new TcpClient();
            try
            {
                await control.ConnectAsync(socks, ct);
                var stream = control.GetStream();
                await stream.WriteAsync(new byte[] { 5, 1, 0 }, ct);
                var method = new byte[2];
                await stream.ReadExactlyAsync(method, ct).AsTask().WaitAsync(TimeSpan.FromSeconds(10), ct);
                Assert.Equal(new byte[] { 5, 0 }, method);
                await stream.WriteAsync(new byte[] { 5, 3, 0, 1, 0, 0, 0, 0, 0, 0 }, ct);
                var reply = new byte[10];
                await stream.ReadExactlyAsync(reply, ct).AsTask().WaitAsync(TimeSpan.FromSeconds(10), ct);
                Assert.True(reply[1] == 0, $"UDP ASSOCIATE answered {reply[1]}");
                Assert.Equal(1, reply[3]);
                var relay = new IPEndPoint(new IPAddress(reply.AsSpan(4, 4)), BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(8)));
                var udp = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
                udp.Bind(new IPEndPoint(IPAddress.Loopback, 0));
                return new Socks5UdpClient(control, udp, relay);
            }
            catch
            {
                control.Dispose();
                throw;
            }
        }

        public async Task SendAsync(string host, int port, byte[] payload, CancellationToken ct)
        {
            var datagram = new List<byte> { 0, 0, 0 };
            if (IPAddress.TryParse(host, out var ip) && ip.AddressFamily == AddressFamily.InterNetwork)
            {
                datagram.Add(1);
                datagram.AddRange(ip.GetAddressBytes());
            }
            else
            {
                datagram.Add(3);
                datagram.Add((byte)host.Length);
                datagram.AddRange(Encoding.ASCII.GetBytes(host));
            }
            datagram.Add((byte)(port >> 8));
            datagram.Add((byte)port);
            datagram.AddRange(payload);
            await _udp.SendToAsync(datagram.ToArray(), SocketFlags.None, _relay, ct);
        }

        /// <summary>The next reply within <paramref name="within"/>: the destination its header names and its payload; null when none came.</summary>
        public async Task<(string Host, int Port, byte[] Payload)?> ReceiveAsync(TimeSpan within, CancellationToken ct)
        {
            var buffer = new byte[70_000];
            using var wait = CancellationTokenSource.CreateLinkedTokenSource(ct);
            wait.CancelAfter(within);
            int length;
            try
            {
                length = await _udp.ReceiveAsync(buffer, SocketFlags.None, wait.Token);
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                return null;
            }
            Assert.True(length >= 10 && buffer[0] == 0 && buffer[1] == 0 && buffer[2] == 0, "a reply without a SOCKS5 UDP header");
            int offset;
            string host;
            switch (buffer[3])
            {
                case 1:
                    host = new IPAddress(buffer.AsSpan(4, 4)).ToString();
                    offset = 8;
                    break;
                case 3:
                    host = Encoding.ASCII.GetString(buffer, 5, buffer[4]);
                    offset = 5 + buffer[4];
                    break;
                default:
                    host = new IPAddress(buffer.AsSpan(4, 16)).ToString();
                    offset = 20;
                    break;
            }
            var port = BinaryPrimitives.ReadUInt16BigEndian(buffer.AsSpan(offset));
            return (host, port, buffer[(offset + 2)..length]);
        }

        /// <summary>Sends until the echo of <paramref name="payload"/> comes back, at most 5 times, 3 s each; earlier echoes are skipped.</summary>
        public async Task<((string Host, int Port)? Reply, int Attempts)> RoundTripAsync(string host, int port, byte[] payload, CancellationToken ct)
        {
            for (var attempt = 1; attempt <= 5; attempt++)
            {
                await SendAsync(host, port, payload, ct);
                var deadline = Stopwatch.StartNew();
                while (deadline.Elapsed < TimeSpan.FromSeconds(3))
                {
                    var reply = await ReceiveAsync(TimeSpan.FromMilliseconds(Math.Max(1, 3000 - deadline.ElapsedMilliseconds)), ct);
                    if (reply is null)
                    {
                        break;
                    }
                    if (reply.Value.Payload.AsSpan().SequenceEqual(payload))
                    {
                        return ((reply.Value.Host, reply.Value.Port), attempt);
                    }
                }
            }
            return (null, 5);
        }

        public void Dispose()
        {
            _udp.Dispose();
            _control.Dispose();
        }
    }

    /// <summary>Where the client's SOCKS5 proxy listens, once its grant has arrived.</summary>
    private static async Task<IPEndPoint> SocksReadyAsync(FerryProcess client)
    {
        var socks = Endpoint(await client.WaitForLineAsync(l => l.Contains("socks5 listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "SOCKS5 listener"));
        await client.WaitForLineAsync(l => l.Contains("Resources granted now: 1", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "grant");
        return socks;
    }
}

using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>Settings an administrator changes on a live deployment: removing a device, and a network's DNS server.</summary>
public sealed class DeviceAndNetworkTests
{
    [Fact]
    public async Task Removing_a_device_closes_its_live_flow_within_two_seconds_and_refuses_its_certificate()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await using var echo = new EchoServer(IPAddress.Loopback);
        var port = echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        await using var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", port, ct);
        await using var client = StartClient(controller, deployment, $"0=127.0.0.1:{port}");
        var forward = await ForwardAsync(client, $"127.0.0.1:{port}");

        using var tcp = new TcpClient();
        await tcp.ConnectAsync(forward, ct);
        var stream = tcp.GetStream();
        await stream.WriteAsync("still here?"u8.ToArray(), ct);
        var buffer = new byte[64];
        var echoed = await stream.ReadAtLeastAsync(buffer, 11, throwOnEndOfStream: false, ct).AsTask().WaitAsync(TimeSpan.FromSeconds(20), ct);
        Assert.True(echoed == 11, $"flow closed before echoing; client:\n{client.Output}\nconnector:\n{deployment.Connector.Output}");

        var device = Assert.Single(await controller.AdminJsonAsync<JsonElement[]>("device", "list", "--json"));
        var id = device.GetProperty("id").GetString()!;
        Assert.True(device.GetProperty("online").GetBoolean(), device.ToString());
        Assert.Equal("service-account", device.GetProperty("ownerKind").GetString());
        Assert.Equal("app", device.GetProperty("owner").GetString());

        var removedAt = Stopwatch.StartNew();
        await controller.DeleteAsync("/api/v1/devices/" + id);
        using var bound = CancellationTokenSource.CreateLinkedTokenSource(ct);
        bound.CancelAfter(TimeSpan.FromSeconds(5));
        try
        {
            while (await stream.ReadAsync(buffer, bound.Token) > 0)
            {
            }
        }
        catch (IOException)
        {
        }
        Assert.True(removedAt.Elapsed < TimeSpan.FromSeconds(2), $"the flow closed {removedAt.Elapsed.TotalMilliseconds:0} ms after the removal");
        await deployment.Connector.WaitForLineAsync(l => l.Contains($"Device device/{id} revoked", StringComparison.Ordinal), TimeSpan.FromSeconds(5), "device revocation logged");
        await controller.Process.WaitForLineAsync(l => l.Contains($"device/{id}", StringComparison.Ordinal) && l.Contains("device removed by an administrator", StringComparison.Ordinal),
            TimeSpan.FromSeconds(10), "the device's session ended with the reason");

        // The old device token is dead; the client signs in again with its key and becomes a new device, which the list shows instead.
        var devices = await WaitForAsync(async () => await controller.AdminJsonAsync<JsonElement[]>("device", "list", "--json") is { Length: 1 } list && list[0].GetProperty("id").GetString() != id ? list : null,
            "the client signed in again as a new device");
        Assert.DoesNotContain(devices, d => d.GetProperty("id").GetString() == id);
        var removedAgain = await controller.AdminRawAsync("device", "remove", id);
        Assert.Contains($"device '{id}' does not exist", removedAgain.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_network_dns_server_set_on_the_controller_resolves_resource_names_at_the_connector_without_a_restart()
    {
        var ct = TestContext.Current.CancellationToken;
        if (!Dnsmasq.IsInstalled)
        {
            Assert.Skip("needs dnsmasq (Debian package dnsmasq-base); scripts/test.sh installs it");
        }
        await using var dns = await Dnsmasq.StartAsync(new Dictionary<string, string> { ["db.corp.internal"] = "127.0.0.1" }, ct);
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await using var echo = new EchoServer(IPAddress.Loopback);
        var port = echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        await using var deployment = await TestDeployment.StartAsync(controller, "db.corp.internal", port, ct);
        // A name may lead to the connector's own loopback only when an IP resource there is granted too.
        await controller.AdminAsync("resource", "add", "127.0.0.1", "--network", "corp", "--name", "loopback", "--tcp", port);
        await controller.AdminAsync("policy", "grant", "loopback", "--service-account", "app");
        await using var client = StartClient(controller, deployment, $"0=db.corp.internal:{port}");
        var forward = await ForwardAsync(client, $"db.corp.internal:{port}");

        // The connector host cannot resolve the name by itself: the flow is refused and the forward closes the connection.
        Assert.Null(await EchoThroughAsync(forward, ct));
        await client.WaitForLineAsync(l => l.Contains("NameNotFound", StringComparison.Ordinal), TimeSpan.FromSeconds(10), "the name-not-found refusal");

        var updated = await controller.AdminJsonAsync<JsonElement>("network", "set", "corp", "--dns-server", dns.EndPoint.ToString(), "--json");
        Assert.Equal(dns.EndPoint.ToString(), updated.GetProperty("dnsServer").GetString());
        await deployment.Connector.WaitForLineAsync(l => l.Contains($"names resolve via DNS server {dns.EndPoint}", StringComparison.Ordinal), TimeSpan.FromSeconds(10), "the network's DNS server applied");
        var answer = await EchoThroughAsync(forward, ct);
        Assert.True(answer == "db.corp.internal says hello", $"got '{answer}'; client:\n{client.Output}\nconnector:\n{deployment.Connector.Output}");

        // A live flow by name is re-checked against the address it was dialled at: revoking the loopback grant that let the
        // name lead there closes it, although the name itself stays granted.
        using (var live = new TcpClient())
        {
            await live.ConnectAsync(forward, ct);
            var stream = live.GetStream();
            await stream.WriteAsync("ping"u8.ToArray(), ct);
            var buffer = new byte[16];
            Assert.Equal(4, await stream.ReadAtLeastAsync(buffer, 4, throwOnEndOfStream: false, ct).AsTask().WaitAsync(TimeSpan.FromSeconds(20), ct));
            var loopbackPolicy = (await controller.AdminJsonAsync<JsonElement[]>("policy", "list", "--json"))
                .Single(p => p.GetProperty("resource").GetString() == "loopback").GetProperty("id").GetString()!;
            var revokedAt = Stopwatch.StartNew();
            await controller.DeleteAsync("/api/v1/policies/" + loopbackPolicy);
            using var bound = CancellationTokenSource.CreateLinkedTokenSource(ct);
            bound.CancelAfter(TimeSpan.FromSeconds(5));
            try
            {
                while (await stream.ReadAsync(buffer, bound.Token) > 0)
                {
                }
            }
            catch (IOException)
            {
            }
            Assert.True(revokedAt.Elapsed < TimeSpan.FromSeconds(2), $"the name flow closed {revokedAt.Elapsed.TotalMilliseconds:0} ms after its address's grant was revoked; connector:\n{deployment.Connector.Output}");
        }
        await controller.AdminAsync("policy", "grant", "loopback", "--service-account", "app");

        // Back to the host's resolver: the name stops resolving again.
        await controller.AdminAsync("network", "set", "corp", "--dns-server", "none");
        await deployment.Connector.WaitForLineAsync(l => l.Contains("names resolve via the connector host's resolver", StringComparison.Ordinal), TimeSpan.FromSeconds(10), "the DNS server cleared");
        Assert.Null(await EchoThroughAsync(forward, ct));
    }

    private static FerryProcess StartClient(ControllerInstance controller, TestDeployment deployment, string forward)
        => FerryProcess.Start("client",
            ["client", "--state", Path.Combine(deployment.Directory, "client"), "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, "--socks", "off", "--forward", forward],
            new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = deployment.ServiceAccountKey });

    private static async Task<IPEndPoint> ForwardAsync(FerryProcess client, string destination)
    {
        var line = await client.WaitForLineAsync(l => l.Contains($"forward {destination} listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "forward listener");
        return IPEndPoint.Parse(line[(line.LastIndexOf(' ') + 1)..]);
    }

    /// <summary>Sends one line through the forward and returns what came back, or null when the flow was refused (closed without an answer).</summary>
    private static async Task<string?> EchoThroughAsync(IPEndPoint forward, CancellationToken ct)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(forward, ct);
        var stream = tcp.GetStream();
        var payload = "db.corp.internal says hello"u8.ToArray();
        try
        {
            await stream.WriteAsync(payload, ct);
            tcp.Client.Shutdown(SocketShutdown.Send);
            using var back = new MemoryStream();
            await stream.CopyToAsync(back, ct).WaitAsync(TimeSpan.FromSeconds(30), ct);
            return back.Length == 0 ? null : System.Text.Encoding.ASCII.GetString(back.ToArray());
        }
        catch (IOException)
        {
            return null;
        }
    }

    private static async Task<T> WaitForAsync<T>(Func<Task<T?>> probe, string what) where T : class
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (DateTime.UtcNow < deadline)
        {
            if (await probe() is { } value)
            {
                return value;
            }
            await Task.Delay(200);
        }
        throw new Xunit.Sdk.XunitException($"never: {what}");
    }
}

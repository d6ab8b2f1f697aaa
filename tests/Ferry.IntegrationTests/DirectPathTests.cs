using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Text.Json;
using Ferry.Core.Api;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>
/// Issue 6 on one host: a client's connection to a connector starts on the relay and moves to a direct path on the host's
/// own address without breaking the stream that is flowing; the client's status and the controller both show the path.
/// </summary>
public sealed class DirectPathTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_flow_that_starts_relayed_moves_to_the_direct_path_without_a_byte_lost_and_status_shows_it()
    {
        var hostAddress = NetworkInterface.GetAllNetworkInterfaces()
            .Where(n => n.OperationalStatus == OperationalStatus.Up && n.NetworkInterfaceType != NetworkInterfaceType.Loopback)
            .SelectMany(n => n.GetIPProperties().UnicastAddresses).Select(u => u.Address)
            .FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a));
        Assert.SkipWhen(hostAddress is null, "this host has no non-loopback IPv4 address to offer as a host candidate");

        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await using var echo = new EchoServer(IPAddress.Loopback);
        var port = echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        await using var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", port, Ct);
        var state = Path.Combine(deployment.Directory, "client");
        await using var client = FerryProcess.Start("client",
            ["client", "--state", state, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, "--socks", "off", "--forward", $"0=127.0.0.1:{port}"],
            new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = deployment.ServiceAccountKey });
        var line = await client.WaitForLineAsync(l => l.Contains("] forward ", StringComparison.Ordinal) && l.Contains(" listening on ", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "the forward");
        var forward = IPEndPoint.Parse(line[(line.LastIndexOf(' ') + 1)..]);
        string Logs() => $"\n--- client:\n{client.Output}\n--- connector:\n{deployment.Connector.Output}";

        // One TCP connection, echoing chunk after chunk for the whole test: a path change must not break or corrupt it.
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(forward, Ct);
        var stream = tcp.GetStream();
        var sent = 0L;
        async Task RoundTripAsync()
        {
            var chunk = new byte[64 * 1024];
            for (var i = 0; i < chunk.Length; i++)
            {
                chunk[i] = (byte)((sent + i) * 31 % 251);
            }
            await stream.WriteAsync(chunk, Ct);
            var back = new byte[chunk.Length];
            await stream.ReadExactlyAsync(back, Ct).AsTask().WaitAsync(TimeSpan.FromSeconds(20), Ct);
            Assert.True(chunk.AsSpan().SequenceEqual(back), $"echoed bytes differ after {sent} bytes" + Logs());
            sent += chunk.Length;
        }

        await RoundTripAsync();
        var first = await PathAsync(state);
        Assert.True(first is not null, "the client must report a path for its connection" + Logs());

        // Direct comes by itself; keep the stream busy meanwhile. Bounded: 30 s.
        var deadline = DateTime.UtcNow.AddSeconds(30);
        JsonElement? path = first;
        while (path?.GetProperty("kind").GetString() != "direct")
        {
            Assert.True(DateTime.UtcNow < deadline, $"the path must become direct within 30 s; last status: {path}" + Logs());
            await RoundTripAsync();
            path = await PathAsync(state);
        }
        var remote = IPEndPoint.Parse(path.Value.GetProperty("remote").GetString()!);
        Assert.True(remote.Address.Equals(hostAddress) || remote.Address.AddressFamily == AddressFamily.InterNetwork,
            $"the direct path must go to a UDP address of the connector, not {remote}" + Logs());
        Assert.True(path.Value.GetProperty("directAfterMs").GetDouble() > 0, $"the time to direct must be reported: {path}");
        Assert.Contains("Path to connector/", client.Output, StringComparison.Ordinal);

        // The same stream keeps working on the direct path, and its bytes now travel there, not through the relay.
        var before = path.Value.GetProperty("bytesReceived").GetInt64();
        for (var i = 0; i < 16; i++)
        {
            await RoundTripAsync();
        }
        var after = await PathAsync(state);
        Assert.Equal("direct", after?.GetProperty("kind").GetString());
        Assert.True(after!.Value.GetProperty("bytesReceived").GetInt64() - before >= 16 * 64 * 1024, $"the connection must have carried the echoed megabyte: {after}");

        // The controller shows what the client reported, for operators.
        var shown = await WaitAsync(async () => (await controller.AdminJsonAsync<DeviceView[]>("device", "list")).SelectMany(d => d.Paths ?? []).FirstOrDefault(p => p.Kind == "direct"),
            TimeSpan.FromSeconds(15));
        Assert.True(shown is not null, "the controller must show the device's direct path" + Logs());
        Assert.Equal(remote.ToString(), shown.Remote);
        tcp.Client.Shutdown(SocketShutdown.Send);
        TestContext.Current.TestOutputHelper?.WriteLine($"direct after {path.Value.GetProperty("directAfterMs")} ms: {after}" + Logs());
    }

    [Fact]
    public async Task With_direct_paths_turned_off_the_client_never_offers_and_stays_on_the_relay_saying_why()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await using var echo = new EchoServer(IPAddress.Loopback);
        var port = echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        await using var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", port, Ct);
        var state = Path.Combine(deployment.Directory, "client");
        await using var client = FerryProcess.Start("client",
            ["client", "--state", state, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, "--socks", "off", "--forward", $"0=127.0.0.1:{port}", "--direct", "off"],
            new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = deployment.ServiceAccountKey });
        var line = await client.WaitForLineAsync(l => l.Contains("] forward ", StringComparison.Ordinal) && l.Contains(" listening on ", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "the forward");
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(IPEndPoint.Parse(line[(line.LastIndexOf(' ') + 1)..]), Ct);
        var payload = System.Security.Cryptography.RandomNumberGenerator.GetBytes(64 * 1024);
        await tcp.GetStream().WriteAsync(payload, Ct);
        var back = new byte[payload.Length];
        await tcp.GetStream().ReadExactlyAsync(back, Ct).AsTask().WaitAsync(TimeSpan.FromSeconds(20), Ct);
        Assert.Equal(payload, back);

        var path = await WaitAsync(async () => await PathAsync(state) is { } p && p.TryGetProperty("directFailure", out var why) && why.ValueKind == JsonValueKind.String ? (object)p : null, TimeSpan.FromSeconds(10));
        var shown = Assert.IsType<JsonElement>(path);
        Assert.Equal("relayed", shown.GetProperty("kind").GetString());
        Assert.Contains("direct paths are turned off on this device", shown.GetProperty("directFailure").GetString(), StringComparison.Ordinal);
        Assert.DoesNotContain("Direct path search with", client.Output, StringComparison.Ordinal);

        var bad = await FerryCli.RunAsync(["client", "--state", state + "2", "up", "--controller", controller.Url, "--direct", "sometimes"]);
        Assert.NotEqual(0, bad.ExitCode);
        Assert.Contains("Argument 'sometimes' not recognized", bad.Stderr, StringComparison.Ordinal);
    }

    private static async Task<JsonElement?> PathAsync(string state)
    {
        var status = await FerryCli.RunAsync(["client", "--state", state, "status"]);
        Assert.True(status.ExitCode == 0, status.ToString());
        var paths = JsonDocument.Parse(status.Stdout).RootElement.GetProperty("paths");
        return paths.GetArrayLength() == 0 ? null : paths[0].Clone();
    }

    private static async Task<T?> WaitAsync<T>(Func<Task<T?>> probe, TimeSpan timeout) where T : class
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            if (await probe() is { } found)
            {
                return found;
            }
            if (DateTime.UtcNow > deadline)
            {
                return null;
            }
            await Task.Delay(250, Ct);
        }
    }
}

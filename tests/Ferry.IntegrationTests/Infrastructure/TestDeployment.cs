using System.Text.Json;

namespace Ferry.IntegrationTests.Infrastructure;

/// <summary>A relay and a connector (real processes) around a controller, one resource, and a service account granted it.</summary>
public sealed class TestDeployment : IAsyncDisposable
{
    private TestDeployment(FerryProcess relay, FerryProcess connector, string serviceAccountKey, string directory)
    {
        Relay = relay;
        Connector = connector;
        ServiceAccountKey = serviceAccountKey;
        Directory = directory;
    }

    public FerryProcess Relay { get; }
    public FerryProcess Connector { get; }
    public string ServiceAccountKey { get; }
    public string Directory { get; }

    /// <summary>
    /// Network "corp" with resource "svc" (<paramref name="address"/>, TCP <paramref name="tcpPorts"/>, and UDP <paramref name="udpPorts"/>
    /// when given) granted to service account "app".
    /// </summary>
    /// <remarks><paramref name="connectorArgs"/> and <paramref name="relayArgs"/> go to those daemons' command lines as they are.</remarks>
    public static async Task<TestDeployment> StartAsync(ControllerInstance controller, string address, string tcpPorts, CancellationToken ct, string? udpPorts = null, string[]? connectorArgs = null, string[]? relayArgs = null)
    {
        var dir = System.IO.Directory.CreateTempSubdirectory("ferry-dp-").FullName;
        var relay = await StartRelayAsync(controller, dir, ct, relayArgs ?? []);
        await controller.AdminAsync("network", "create", "corp");
        await controller.AdminAsync(["resource", "add", address, "--network", "corp", "--name", "svc", "--tcp", tcpPorts, .. udpPorts is null ? Array.Empty<string>() : ["--udp", udpPorts]]);
        var account = await controller.AdminJsonAsync<JsonElement>("service-account", "create", "app");
        await controller.AdminAsync("policy", "grant", "svc", "--service-account", "app");
        var connector = controller.StartConnector(await controller.ProvisionAsync("corp", "c1", dir), connectorArgs ?? []);
        await controller.WaitForConnectorAsync("c1", v => v.State == "online" && v.Stun.Status == "ok", TimeSpan.FromSeconds(30), "online with STUN done");
        return new TestDeployment(relay, connector, account.GetProperty("key").GetString()!, dir);
    }

    /// <summary>Provisions relay "r1" and runs it on loopback until it accepts links.</summary>
    public static async Task<FerryProcess> StartRelayAsync(ControllerInstance controller, string directory, CancellationToken ct, params string[] extra)
    {
        var relayTokens = Path.Combine(directory, "relay.json");
        await File.WriteAllTextAsync(relayTokens, await controller.AdminAsync("relay", "provision", "--name", "r1", "--json"), ct);
        var relay = FerryProcess.Start("relay", ["relay", "--tokens", relayTokens, "--listen", "127.0.0.1:0", "--stun", "127.0.0.1:0", .. extra]);
        await relay.WaitForLineAsync(l => l.Contains("Relay links accepted", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "relay listening");
        return relay;
    }

    public async ValueTask DisposeAsync()
    {
        await Connector.DisposeAsync();
        await Relay.DisposeAsync();
    }
}

using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Ferry.IntegrationTests.Infrastructure;
using Ferry.NetworkTests.Infrastructure;

namespace Ferry.NetworkTests;

/// <summary>
/// A resource named by a DNS name that only the private network can resolve, on an address only the private network can
/// route to: the client reaches it through the connector, which resolves the name on its own side.
/// </summary>
public sealed class PrivateNameResolutionTests
{
    private const string Name = "db.corp.internal";
    private const string PrivateAddress = "10.77.2.10";
    private const string ConnectorPrivateAddress = "10.77.2.1";
    private const int ServicePort = 80;
    private const string Body = "hello from db.corp.internal, only on the private segment";

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Client_reaches_a_name_only_the_connectors_segment_resolves_and_routes()
    {
        NetworkLab.RequireAvailable();
        Assert.SkipUnless(File.Exists("/usr/bin/curl") && File.Exists("/usr/bin/getent"), "needs curl and getent (Debian packages curl and libc-bin)");

        await using var lab = new NetworkLab();
        // pub (the internet): controller and relay on 198.18.0.1; the client's segment 198.18.5.0/24 hangs off it too.
        // conn: the connector host and the private segment's NAT router: WAN 198.18.0.2 towards pub, LAN 10.77.2.1.
        // priv: the private service on 10.77.2.10, reachable only from the private segment.
        // cli: the client on 198.18.5.2, default route via pub, which has no route to 10.77.2.0/24.
        var pub = await lab.HostAsync("pub");
        var conn = await lab.HostAsync("conn");
        var priv = await lab.HostAsync("priv");
        var cli = await lab.HostAsync("cli");
        var (_, connWan) = await lab.LinkAsync(pub, "198.18.0.1/24", conn, "198.18.0.2/24");
        await lab.LinkAsync(conn, $"{ConnectorPrivateAddress}/24", priv, $"{PrivateAddress}/24");
        await lab.LinkAsync(pub, "198.18.5.1/24", cli, "198.18.5.2/24");
        await lab.DefaultRouteAsync(conn, "198.18.0.1");
        await lab.DefaultRouteAsync(priv, ConnectorPrivateAddress);
        await lab.DefaultRouteAsync(cli, "198.18.5.1");
        await lab.NatAsync(conn, connWan);

        // Only the connector's side knows the name: 'ip netns exec conn …' (how the connector is started) mounts this over /etc/hosts.
        await lab.EtcFileAsync(conn, "hosts", $"127.0.0.1 localhost\n{PrivateAddress} {Name}\n");
        // Names not in a hosts file go to a DNS server that is not there (refused at once), not to this machine's resolver,
        // which the namespaces cannot reach and would wait for: lookups fail fast on both sides.
        await lab.EtcFileAsync(conn, "resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n");
        await lab.EtcFileAsync(cli, "resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n");

        using var web = NetNamespace.Create(priv, () => LabHttpServer.Fixed(new IPEndPoint(IPAddress.Parse(PrivateAddress), ServicePort), Body));

        // The premise: from the client's namespace the name does not resolve and the address is not reachable;
        // from the connector's namespace both work (so a pass below is Ferry's doing, not the lab's).
        var clientLookup = await ExternalProcess.CaptureAsync("ip", ["netns", "exec", cli, "getent", "hosts", Name], TimeSpan.FromSeconds(20), Ct);
        Assert.True(clientLookup.ExitCode != 0, $"the client's namespace must not resolve {Name}: {clientLookup}");
        var connectorLookup = await ExternalProcess.CaptureAsync("ip", ["netns", "exec", conn, "getent", "hosts", Name], TimeSpan.FromSeconds(20), Ct);
        Assert.True(connectorLookup.ExitCode == 0 && connectorLookup.Stdout.StartsWith(PrivateAddress + " ", StringComparison.Ordinal), $"the connector's namespace must resolve {Name}: {connectorLookup}");
        var direct = await TryConnectAsync(cli, PrivateAddress, ServicePort);
        Assert.True(direct is not null, $"the client's namespace must not reach {PrivateAddress}:{ServicePort}, but a TCP connection was made");
        Assert.Null(await TryConnectAsync(conn, PrivateAddress, ServicePort));

        await using var controller = await ControllerInstance.StartInAsync(pub, "198.18.0.1");
        var dir = Directory.CreateTempSubdirectory("ferry-net-").FullName;
        try
        {
            var relayTokens = Path.Combine(dir, "relay.json");
            await File.WriteAllTextAsync(relayTokens, await controller.AdminAsync("relay", "provision", "--name", "pub-relay", "--json"), Ct);
            await using var relay = FerryProcess.Start("relay", ["relay", "--tokens", relayTokens, "--listen", "198.18.0.1:0", "--stun", "198.18.0.1:3478"], netns: pub);
            await relay.WaitForLineAsync(l => l.Contains("Relay links accepted", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "relay listening");

            await controller.AdminAsync("network", "create", "corp");
            await controller.AdminAsync("resource", "add", Name, "--network", "corp", "--name", "db", "--tcp", ServicePort.ToString(System.Globalization.CultureInfo.InvariantCulture));
            var key = JsonDocument.Parse(await controller.AdminAsync("service-account", "create", "app", "--json")).RootElement.GetProperty("key").GetString();
            await controller.AdminAsync("policy", "grant", "db", "--service-account", "app");
            var connectorTokens = await controller.ProvisionAsync("corp", "corp-1", dir);
            await using var connector = FerryProcess.Start("connector", ["connector", "--tokens", connectorTokens], netns: conn);
            await controller.WaitForConnectorAsync("corp-1", v => v.State == "online", TimeSpan.FromSeconds(45), "online");

            var state = Path.Combine(dir, "client");
            await using var client = FerryProcess.Start("client",
                ["client", "--state", state, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint,
                 "--socks", "0", "--forward", $"0={Name}:{ServicePort}"],
                new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = key }, netns: cli);
            var socks = Endpoint(await client.WaitForLineAsync(l => l.Contains("socks5 listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "SOCKS5 listener"));
            var forward = Endpoint(await client.WaitForLineAsync(l => l.Contains($"forward {Name}:{ServicePort} listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "forward listener"));
            await client.WaitForLineAsync(l => l.Contains("Resources granted now: 1", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "grant");
            string Logs() => $"\n--- client:\n{client.Output}\n--- connector:\n{connector.Output}\n--- relay:\n{relay.Output}";
            var peersBefore = web.Peers.Count;

            // curl in the client's namespace hands the name to the SOCKS5 proxy unresolved; the connector resolves it.
            var viaSocks = await NetworkLab.CurlAsync(cli, ["--socks5-hostname", socks.ToString(), $"http://{Name}:{ServicePort}/"], Ct);
            Assert.True(viaSocks.ExitCode == 0, viaSocks + Logs());
            Assert.Equal(Body, viaSocks.Stdout);

            // A port forward to the name: a plain HTTP client on loopback in the client's namespace.
            var viaForward = await NetworkLab.CurlAsync(cli, ["-H", $"Host: {Name}", $"http://{forward}/"], Ct);
            Assert.True(viaForward.ExitCode == 0, viaForward + Logs());
            Assert.Equal(Body, viaForward.Stdout);

            // The connector resolved the name to the private address and dialled it from its private leg.
            await connector.WaitForLineAsync(l => l.Contains($"{Name}:{ServicePort} connected via {PrivateAddress}:{ServicePort}", StringComparison.Ordinal), TimeSpan.FromSeconds(5), "flow resolved on the connector");
            var peers = web.Peers.Skip(peersBefore).ToList();
            Assert.True(peers.Count == 2 && peers.All(p => p.Address.Equals(IPAddress.Parse(ConnectorPrivateAddress))),
                $"the service must have been reached twice, from the connector's private leg; saw {string.Join(", ", peers)}" + Logs());
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static IPEndPoint Endpoint(string logLine) => IPEndPoint.Parse(logLine[(logLine.LastIndexOf(' ') + 1)..]);

    /// <summary>Connects from inside <paramref name="ns"/>: null when connected, otherwise why not (bounded to 5 s).</summary>
    private static async Task<string?> TryConnectAsync(string ns, string address, int port)
    {
        using var socket = NetNamespace.Create(ns, () => new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp));
        using var bound = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        try
        {
            await socket.ConnectAsync(new IPEndPoint(IPAddress.Parse(address), port), bound.Token);
            return null;
        }
        catch (SocketException e)
        {
            return e.SocketErrorCode.ToString();
        }
        catch (OperationCanceledException)
        {
            return "timed out";
        }
    }
}

using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Ferry.Core.Api;
using Ferry.IntegrationTests.Infrastructure;
using Ferry.NetworkTests.Infrastructure;

namespace Ferry.NetworkTests;

/// <summary>
/// Exit networks: public destinations leave from the exit network's connector, so a third-party service sees (and can
/// allow-list) the connector's NATed public address, never the client's; a network that is not an exit network refuses
/// them, on the controller (public IP resources) and on the connector (names that resolve to public addresses).
/// </summary>
public sealed class ExitNetworkTests
{
    // The "third-party service": a public address (TEST-NET-3) on the internet namespace, apart from the controller's.
    private const string ServerAddress = "203.0.113.80";
    private const int ServerPort = 8080;
    private const string ControllerAddress = "198.18.0.1";
    // The connector host's NAT router: its WAN address is what the internet sees of the connector.
    private const string NatPublicAddress = "198.18.0.2";
    private const string ConnectorAddress = "10.77.3.10";
    private const string ClientAddress = "198.18.5.2";
    // Names the connector host's resolver maps to the public server: one a resource of the exit network, one of a private network.
    private const string ExitName = "api.example.test";
    private const string PrivateNetworkName = "www.example.test";

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static readonly string Port = ServerPort.ToString(CultureInfo.InvariantCulture);

    [Fact]
    public async Task Exit_network_traffic_leaves_from_the_connectors_public_address_and_other_networks_refuse_public_destinations()
    {
        NetworkLab.RequireAvailable();
        Assert.SkipUnless(File.Exists("/usr/bin/curl"), "needs curl (Debian package curl)");

        await using var lab = new NetworkLab();
        // pub (the internet): controller and relay on 198.18.0.1, the public service on 203.0.113.80; two segments hang off it.
        // gw: the connector site's NAT router, WAN 198.18.0.2 (masqueraded), LAN 10.77.3.1.
        // conn: the connector host on 10.77.3.10, default route via gw; both connectors run here.
        // cli: the client on 198.18.5.2, default route via pub (it can reach the service directly, from its own address).
        var pub = await lab.HostAsync("pub");
        var gw = await lab.HostAsync("gw");
        var conn = await lab.HostAsync("conn");
        var cli = await lab.HostAsync("cli");
        var (_, gwWan) = await lab.LinkAsync(pub, $"{ControllerAddress}/24", gw, $"{NatPublicAddress}/24");
        await lab.LinkAsync(gw, "10.77.3.1/24", conn, $"{ConnectorAddress}/24");
        await lab.LinkAsync(pub, "198.18.5.1/24", cli, $"{ClientAddress}/24");
        await NetworkLab.RunAsync("ip", "-n", pub, "addr", "add", $"{ServerAddress}/32", "dev", "lo");
        await lab.DefaultRouteAsync(gw, ControllerAddress);
        await lab.DefaultRouteAsync(conn, "10.77.3.1");
        await lab.DefaultRouteAsync(cli, "198.18.5.1");
        await lab.NatAsync(gw, gwWan);

        // The connector host resolves both names to the public service ('ip netns exec conn …' mounts these over /etc);
        // other names fail at once instead of waiting for a resolver the namespaces cannot reach.
        await lab.EtcFileAsync(conn, "hosts", $"127.0.0.1 localhost\n{ServerAddress} {ExitName} {PrivateNetworkName}\n");
        await lab.EtcFileAsync(conn, "resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n");
        await lab.EtcFileAsync(cli, "resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n");

        using var web = NetNamespace.Create(pub, () => LabHttpServer.PeerEcho(new IPEndPoint(IPAddress.Parse(ServerAddress), ServerPort)));
        var serverUrl = $"http://{ServerAddress}:{Port}/";

        // The premise: the service tells its callers apart. Straight from the client it sees the client's address; straight
        // from the connector host it sees the NAT's public address (the connector's own address is private and never leaves the site).
        var fromClient = await NetworkLab.CurlAsync(cli, [serverUrl], Ct);
        Assert.True(fromClient.ExitCode == 0 && fromClient.Stdout == ClientAddress, $"a direct fetch from the client must be seen from {ClientAddress}: {fromClient}");
        var fromConnectorHost = await NetworkLab.CurlAsync(conn, [serverUrl], Ct);
        Assert.True(fromConnectorHost.ExitCode == 0 && fromConnectorHost.Stdout == NatPublicAddress, $"a direct fetch from the connector host must be seen from {NatPublicAddress}: {fromConnectorHost}");

        await using var controller = await ControllerInstance.StartInAsync(pub, ControllerAddress);
        var dir = Directory.CreateTempSubdirectory("ferry-net-").FullName;
        try
        {
            var relayTokens = Path.Combine(dir, "relay.json");
            await File.WriteAllTextAsync(relayTokens, await controller.AdminAsync("relay", "provision", "--name", "pub-relay", "--json"), Ct);
            await using var relay = FerryProcess.Start("relay", ["relay", "--tokens", relayTokens, "--listen", $"{ControllerAddress}:0", "--stun", $"{ControllerAddress}:3478"], netns: pub);
            await relay.WaitForLineAsync(l => l.Contains("Relay links accepted", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "relay listening");

            // egress: an exit network holding the public service by address and by a name that resolves to it.
            await controller.AdminAsync("network", "create", "egress", "--exit");
            await controller.AdminAsync("resource", "add", ServerAddress, "--network", "egress", "--name", "public-web", "--tcp", Port);
            await controller.AdminAsync("resource", "add", ExitName, "--network", "egress", "--name", "public-api", "--tcp", Port);
            // corp: not an exit network. The controller refuses public IP and CIDR resources in it outright…
            await controller.AdminAsync("network", "create", "corp");
            foreach (var publicAddress in new[] { ServerAddress, "203.0.113.0/24" })
            {
                var refusedAdd = await controller.AdminRawAsync("resource", "add", publicAddress, "--network", "corp", "--tcp", Port);
                Assert.True(refusedAdd.ExitCode != 0, $"adding public {publicAddress} to the non-exit network corp must fail: {refusedAdd}");
                Assert.Contains("is a public address", refusedAdd.Stderr, StringComparison.Ordinal);
                Assert.Contains("network 'corp' is not an exit network", refusedAdd.Stderr, StringComparison.Ordinal);
            }
            // …but a name is judged where it resolves: on the connector, which must refuse it.
            await controller.AdminAsync("resource", "add", PrivateNetworkName, "--network", "corp", "--name", "corp-www", "--tcp", Port);
            var corpResources = await controller.AdminAsync("resource", "list", "--network", "corp", "--json");
            Assert.DoesNotContain("203.0.113.", corpResources, StringComparison.Ordinal);

            var key = JsonDocument.Parse(await controller.AdminAsync("service-account", "create", "app", "--json")).RootElement.GetProperty("key").GetString();
            foreach (var resource in new[] { "public-web", "public-api", "corp-www" })
            {
                await controller.AdminAsync("policy", "grant", resource, "--service-account", "app");
            }

            var egressTokens = await controller.ProvisionAsync("egress", "egress-1", dir);
            var corpTokens = await controller.ProvisionAsync("corp", "corp-1", dir);
            await using var egressConnector = FerryProcess.Start("connector egress-1", ["connector", "--tokens", egressTokens], netns: conn);
            await using var corpConnector = FerryProcess.Start("connector corp-1", ["connector", "--tokens", corpTokens], netns: conn);
            var egressView = await controller.WaitForConnectorAsync("egress-1", v => v.State == "online", TimeSpan.FromSeconds(45), "online");
            await controller.WaitForConnectorAsync("corp-1", v => v.State == "online", TimeSpan.FromSeconds(45), "online");
            // Each connector knows its network's exit flag and resources before any flow comes.
            await egressConnector.WaitForLineAsync(l => l.Contains("Network egress:", StringComparison.Ordinal) && l.Contains("exit network: public destinations allowed", StringComparison.Ordinal),
                TimeSpan.FromSeconds(30), "the exit network's settings");
            await egressConnector.WaitForLineAsync(l => l.Contains("Access table: 2 resources", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "egress access table");
            var corpSettings = await corpConnector.WaitForLineAsync(l => l.Contains("Network corp:", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "corp's network settings");
            Assert.DoesNotContain("exit network", corpSettings, StringComparison.Ordinal);
            await corpConnector.WaitForLineAsync(l => l.Contains("Access table: 1 resources", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "corp access table");

            var state = Path.Combine(dir, "client");
            await using var client = FerryProcess.Start("client",
                ["client", "--state", state, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, "--socks", "0"],
                new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = key }, netns: cli);
            var socks = Endpoint(await client.WaitForLineAsync(l => l.Contains("socks5 listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "SOCKS5 listener")).ToString();
            await client.WaitForLineAsync(l => l.Contains("Resources granted now: 3", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "grants");
            string Logs() => $"\n--- client:\n{client.Output}\n--- connector egress-1:\n{egressConnector.Output}\n--- connector corp-1:\n{corpConnector.Output}\n--- relay:\n{relay.Output}";

            // Through Ferry the service sees the exit connector's public (NAT) address, by IP resource and by name resource alike.
            var peersBefore = web.Peers.Count;
            var viaAddress = await NetworkLab.CurlAsync(cli, ["--socks5", socks, serverUrl], Ct);
            Assert.True(viaAddress.ExitCode == 0, viaAddress + Logs());
            Assert.True(viaAddress.Stdout == NatPublicAddress,
                $"through the exit network the service must see the connector's public address {NatPublicAddress}, not the client's {ClientAddress}; it saw '{viaAddress.Stdout}'" + Logs());
            var viaName = await NetworkLab.CurlAsync(cli, ["--socks5-hostname", socks, $"http://{ExitName}:{Port}/"], Ct);
            Assert.True(viaName.ExitCode == 0, viaName + Logs());
            Assert.Equal(NatPublicAddress, viaName.Stdout);
            await egressConnector.WaitForLineAsync(l => l.Contains($" {ServerAddress}:{Port} connected via {ServerAddress}:{Port}", StringComparison.Ordinal), TimeSpan.FromSeconds(5), "the flow by address connected on the exit connector");
            await egressConnector.WaitForLineAsync(l => l.Contains($" {ExitName}:{Port} connected via {ServerAddress}:{Port}", StringComparison.Ordinal), TimeSpan.FromSeconds(5), "the flow by name connected on the exit connector");
            var peers = web.Peers.Skip(peersBefore).Select(p => p.Address.ToString()).ToList();
            Assert.True(peers.Count == 2 && peers.All(p => p == NatPublicAddress), $"the service must have been reached twice from {NatPublicAddress}; saw {string.Join(", ", peers)}" + Logs());
            // The address an operator reads off the controller is the one to allow-list.
            Assert.Equal(NatPublicAddress, egressView.PublicIp);

            // egress cannot stop being an exit network while it holds a public resource; it stays one and keeps working.
            var unexit = await controller.AdminRawAsync("network", "set", "egress", "--exit", "false");
            Assert.True(unexit.ExitCode != 0, $"'network set egress --exit false' must be refused while it holds public-web: {unexit}");
            Assert.Contains("public-web", unexit.Stderr, StringComparison.Ordinal);
            Assert.Contains("remove them before it stops being an exit network", unexit.Stderr, StringComparison.Ordinal);
            Assert.True((await controller.AdminJsonAsync<NetworkView>("network", "show", "egress")).Exit, "egress must still be an exit network after the refused change");
            var again = await NetworkLab.CurlAsync(cli, ["--socks5", socks, serverUrl], Ct);
            Assert.True(again.ExitCode == 0 && again.Stdout == NatPublicAddress, again + Logs());

            // corp's connector resolves www.example.test to the public service and refuses to dial it: the service never hears of it.
            peersBefore = web.Peers.Count;
            var viaCorp = await NetworkLab.CurlAsync(cli, ["--socks5-hostname", socks, $"http://{PrivateNetworkName}:{Port}/"], Ct);
            Assert.True(viaCorp.ExitCode != 0, $"a name of the non-exit network corp that resolves to a public address must not be fetched: {viaCorp}" + Logs());
            var reason = $"'{PrivateNetworkName}' resolved to {ServerAddress}, a public address, and network 'corp' is not an exit network";
            var refusal = await corpConnector.WaitForLineAsync(l => l.Contains($" {PrivateNetworkName}:{Port} refused", StringComparison.Ordinal), TimeSpan.FromSeconds(10), "the refusal on corp's connector");
            Assert.True(refusal.Contains(reason, StringComparison.Ordinal), $"the refusal must say why: {refusal}" + Logs());
            var told = await client.WaitForLineAsync(l => l.Contains($"{PrivateNetworkName}:{Port} refused", StringComparison.Ordinal), TimeSpan.FromSeconds(10), "the refusal reaching the client");
            Assert.True(told.Contains(reason, StringComparison.Ordinal), $"the client must be told why: {told}" + Logs());
            Assert.DoesNotContain(corpConnector.Output.Split('\n'), l => l.Contains("connected via", StringComparison.Ordinal));
            Assert.True(web.Peers.Count == peersBefore, $"the service must not have been reached through corp; saw {string.Join(", ", web.Peers.Skip(peersBefore))}" + Logs());

            // The refusal is the exit flag's doing. Marking corp an exit network reaches its connector live, and the same fetch
            // then leaves from the NAT address; corp holds no public IP or CIDR resource, so it may stop being one again, and
            // the refusal is back.
            await controller.AdminAsync("network", "set", "corp", "--exit", "true");
            await WaitUntilAsync(() => LastSettings(corpConnector, "corp")?.Contains("exit network: public destinations allowed", StringComparison.Ordinal) == true,
                TimeSpan.FromSeconds(30), "corp's connector applying --exit true", Logs);
            var nowExit = await NetworkLab.CurlAsync(cli, ["--socks5-hostname", socks, $"http://{PrivateNetworkName}:{Port}/"], Ct);
            Assert.True(nowExit.ExitCode == 0 && nowExit.Stdout == NatPublicAddress, $"once corp is an exit network its connector must dial {PrivateNetworkName}: {nowExit}" + Logs());
            await controller.AdminAsync("network", "set", "corp", "--exit", "false");
            await WaitUntilAsync(() => LastSettings(corpConnector, "corp") is { } line && !line.Contains("exit network", StringComparison.Ordinal),
                TimeSpan.FromSeconds(30), "corp's connector applying --exit false", Logs);
            var refusalsBefore = Refusals(corpConnector);
            var refusedAgain = await NetworkLab.CurlAsync(cli, ["--socks5-hostname", socks, $"http://{PrivateNetworkName}:{Port}/"], Ct);
            Assert.True(refusedAgain.ExitCode != 0, $"once corp is no exit network again its connector must refuse {PrivateNetworkName}: {refusedAgain}" + Logs());
            await WaitUntilAsync(() => Refusals(corpConnector) > refusalsBefore, TimeSpan.FromSeconds(10), "the second refusal on corp's connector", Logs);
            Assert.Contains(reason, corpConnector.Output.Split('\n').Last(IsRefusal), StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static IPEndPoint Endpoint(string logLine) => IPEndPoint.Parse(logLine[(logLine.LastIndexOf(' ') + 1)..]);

    /// <summary>The connector's latest "Network NAME: names resolve via …" line (logged whenever its network's settings change), if any.</summary>
    private static string? LastSettings(FerryProcess connector, string network)
        => connector.Output.Split('\n').LastOrDefault(l => l.Contains($"Network {network}:", StringComparison.Ordinal));

    private static bool IsRefusal(string line) => line.Contains($" {PrivateNetworkName}:{Port} refused", StringComparison.Ordinal);

    private static int Refusals(FerryProcess connector) => connector.Output.Split('\n').Count(IsRefusal);

    /// <summary>Polls <paramref name="condition"/> until it holds, failing with <paramref name="logs"/> after <paramref name="timeout"/>.</summary>
    private static async Task WaitUntilAsync(Func<bool> condition, TimeSpan timeout, string what, Func<string> logs)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new Xunit.Sdk.XunitException($"no {what} within {timeout.TotalSeconds:0} s" + logs());
            }
            await Task.Delay(100, Ct);
        }
    }
}

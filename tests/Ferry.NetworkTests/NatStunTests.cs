using Ferry.IntegrationTests.Infrastructure;
using Ferry.NetworkTests.Infrastructure;

namespace Ferry.NetworkTests;

/// <summary>Issue 3: a connector behind a NAT router learns the router's public address through a relay's STUN server, and the controller shows it.</summary>
public sealed class NatStunTests
{
    [Fact]
    public async Task Connector_behind_nat_reports_the_nat_public_address_as_its_stun_mapped_address()
    {
        NetworkLab.RequireAvailable();
        await using var lab = new NetworkLab();
        // public segment: controller and relay on 198.18.0.1; the NAT router's WAN is 198.18.0.2; the private host sits behind it.
        var pub = await lab.HostAsync("pub");
        var nat = await lab.HostAsync("nat");
        var priv = await lab.HostAsync("priv");
        var (_, wan) = await lab.LinkAsync(pub, "198.18.0.1/24", nat, "198.18.0.2/24");
        var (_, lan) = await lab.LinkAsync(nat, "198.19.1.1/24", priv, "198.19.1.2/24");
        await lab.DefaultRouteAsync(priv, "198.19.1.1");
        await lab.NatAsync(nat, wan);

        await using var controller = await ControllerInstance.StartInAsync(pub, "198.18.0.1");
        var dir = Directory.CreateTempSubdirectory("ferry-net-").FullName;
        var relayTokens = Path.Combine(dir, "relay.json");
        await File.WriteAllTextAsync(relayTokens, await controller.AdminAsync("relay", "provision", "--name", "pub-relay", "--json"), TestContext.Current.CancellationToken);
        await using var relay = FerryProcess.Start("relay", ["relay", "--tokens", relayTokens, "--listen", "198.18.0.1:0", "--stun", "198.18.0.1:3478"], netns: pub);
        await relay.WaitForLineAsync(l => l.Contains("Relay links accepted", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "relay listening");

        await controller.AdminAsync("network", "create", "home");
        var connectorTokens = await controller.ProvisionAsync("home", "behind-nat", dir);
        await using var connector = FerryProcess.Start("connector", ["connector", "--tokens", connectorTokens], netns: priv);

        var view = await controller.WaitForConnectorAsync("behind-nat", v => v.Stun.Status != "not-run", TimeSpan.FromSeconds(45), "STUN reported");
        Assert.Equal("ok", view.Stun.Status);
        Assert.StartsWith("198.18.0.2:", view.Stun.MappedAddress, StringComparison.Ordinal);
        Assert.Equal(["pub-relay"], view.Stun.Relays ?? []);
        Assert.Equal("198.18.0.2", view.PublicIp);
        Assert.Contains("198.19.1.2", view.PrivateIps);
        Assert.Equal("online", view.State);

        // The connector host moves to another address on its LAN: it notices, runs STUN again, and the controller hears of it.
        // Without promote_secondaries, deleting the old (primary) address would take the new one in the same subnet with it.
        await NetworkLab.RunAsync("ip", "netns", "exec", priv, "sysctl", "-qw", $"net.ipv4.conf.{lan}.promote_secondaries=1");
        await NetworkLab.RunAsync("ip", "-n", priv, "addr", "add", "198.19.1.3/24", "dev", lan);
        await NetworkLab.RunAsync("ip", "-n", priv, "route", "replace", "default", "via", "198.19.1.1", "src", "198.19.1.3");
        await NetworkLab.RunAsync("ip", "-n", priv, "addr", "del", "198.19.1.2/24", "dev", lan);
        await connector.WaitForLineAsync(l => l.Contains("Network changed: host addresses 198.19.1.2 -> 198.19.1.3", StringComparison.Ordinal), TimeSpan.FromSeconds(20), "the address change noticed");
        var moved = await controller.WaitForConnectorAsync("behind-nat", v => v.Stun.At > view.Stun.At, TimeSpan.FromSeconds(30), "a STUN report after the move");
        Assert.Equal("ok", moved.Stun.Status);
        Assert.StartsWith("198.18.0.2:", moved.Stun.MappedAddress, StringComparison.Ordinal);

        // A client behind the same NAT learns the same public address on its own data-plane socket.
        var account = System.Text.Json.JsonDocument.Parse(await controller.AdminAsync("service-account", "create", "roamer", "--json")).RootElement.GetProperty("key").GetString();
        var state = Path.Combine(dir, "client");
        await using var client = FerryProcess.Start("client", ["client", "--state", state, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, "--socks", "0"],
            new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = account }, netns: priv);
        await client.WaitForLineAsync(l => l.Contains("STUN discovery ok", StringComparison.Ordinal), TimeSpan.FromSeconds(45), "client STUN result");
        var status = await FerryCli.RunAsync(["client", "--state", state, "status"]);
        var stun = System.Text.Json.JsonDocument.Parse(status.Stdout).RootElement.GetProperty("stun");
        Assert.Equal("ok", stun.GetProperty("status").GetString());
        Assert.StartsWith("198.18.0.2:", stun.GetProperty("mappedAddress").GetString(), StringComparison.Ordinal);
    }
}

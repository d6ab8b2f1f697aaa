using System.Text.Json;
using Ferry.Core.Api;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>
/// Issue 8 (edit): resources change in place (name, address, ports) with bad changes refused by reason, users get new
/// passwords, and a change that no longer allows a live flow closes it.
/// </summary>
public sealed class ResourceEditTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_resource_is_changed_in_place_and_bad_changes_are_refused_with_their_reason()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await controller.AdminAsync("network", "create", "corp");
        await controller.AdminAsync("resource", "add", "db.corp.internal", "--network", "corp", "--name", "db", "--tcp", "5432");

        var changed = await controller.AdminJsonAsync<ResourceView>("resource", "set", "db", "--tcp", "5432,6432", "--udp", "53");
        Assert.Equal(("5432,6432", "53", "db.corp.internal"), (changed.Tcp, changed.Udp, changed.Address));
        var renamed = await controller.AdminJsonAsync<ResourceView>("resource", "set", "db", "--name", "pg", "--address", "10.20.0.5");
        Assert.Equal(("pg", "10.20.0.5", "ip", "5432,6432"), (renamed.Name, renamed.Address, renamed.Kind, renamed.Tcp));
        Assert.Equal(changed.Id, renamed.Id);

        (string[] Args, string Expected)[] refused =
        [
            (["resource", "set", "pg", "--tcp", "80-22"], "port range '80-22' runs backwards"),
            (["resource", "set", "pg", "--address", "10.0.0.0/33"], "'10.0.0.0/33' is not a valid CIDR"),
            (["resource", "set", "pg", "--address", "203.0.113.7"], "203.0.113.7 is a public address, and network 'corp' is not an exit network"),
            (["resource", "set", "pg", "--tcp", "none", "--udp", "none"], "a resource must allow at least one protocol"),
            (["resource", "set", "ghost", "--tcp", "22"], "resource 'ghost' does not exist"),
            (["resource", "set", "pg"], "nothing to change: give a new name, address, TCP ports or UDP ports"),
        ];
        foreach (var (args, expected) in refused)
        {
            var result = await controller.AdminRawAsync(args);
            Assert.True(result.ExitCode != 0 && result.Stderr.Contains(expected, StringComparison.Ordinal), $"ferry admin {string.Join(' ', args)}: expected '{expected}'\n{result}");
        }
        await controller.AdminAsync("resource", "add", "10.20.0.6", "--network", "corp", "--name", "other");
        var taken = await controller.AdminRawAsync("resource", "set", "other", "--name", "pg");
        Assert.Contains("a resource named 'pg' exists already", taken.Stderr, StringComparison.Ordinal);

        // Nothing half-written: after the refusals the resource is exactly as last changed.
        var now = (await controller.AdminJsonAsync<ResourceView[]>("resource", "list")).Single(r => r.Name == "pg");
        Assert.Equal(renamed, now);
        var audit = await controller.AdminAsync("audit", "list");
        Assert.Contains("resource.update", audit, StringComparison.Ordinal);

        // A user's password is set anew; too short is refused.
        var env = controller.AdminEnv();
        env["FERRY_PASSWORD"] = "first password";
        Assert.Equal(0, (await FerryCli.RunAsync(["admin", "user", "create", "alice"], env)).ExitCode);
        env["FERRY_PASSWORD"] = "short";
        Assert.Contains("at least 8 characters", (await FerryCli.RunAsync(["admin", "user", "set-password", "alice"], env)).Stderr, StringComparison.Ordinal);
        env["FERRY_PASSWORD"] = "second password";
        Assert.Equal(0, (await FerryCli.RunAsync(["admin", "user", "set-password", "alice"], env)).ExitCode);
        using var http = controller.Http(withApiKey: false);
        var oldLogin = await http.PostAsync("/v1/client/login", JsonContent(new ClientLoginRequest("alice", "first password", null, "laptop", null)), Ct);
        Assert.False(oldLogin.IsSuccessStatusCode, "the old password must no longer sign in");
        var newLogin = await http.PostAsync("/v1/client/login", JsonContent(new ClientLoginRequest("alice", "second password", null, "laptop", null)), Ct);
        Assert.True(newLogin.IsSuccessStatusCode, await newLogin.Content.ReadAsStringAsync(Ct));
    }

    [Fact]
    public async Task Narrowing_a_resources_ports_closes_the_live_flows_it_no_longer_allows()
    {
        await using var lab = await ClusterLab.StartAsync(Ct);
        await lab.AddConnectorAsync("c1");
        var client = await lab.AddClientAsync();
        await using var running = await LongFlow.OpenAsync(client.Forwards[0], Ct);
        await running.RoundTripAsync(Ct);

        await lab.Controller.AdminAsync("resource", "set", "svc", "--tcp", "1");
        var deadline = DateTime.UtcNow.AddSeconds(15);
        Exception? ended = null;
        while (ended is null && DateTime.UtcNow < deadline)
        {
            try
            {
                await running.RoundTripAsync(Ct);
            }
            catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or TimeoutException)
            {
                ended = e;
            }
        }
        Assert.True(ended is not null, "the flow must be closed once the resource no longer allows its port\n" + lab.Logs());
        await lab.Connector("c1").WaitForLineAsync(l => l.Contains("revoked", StringComparison.Ordinal), TimeSpan.FromSeconds(5), "the revocation logged");
    }

    private static StringContent JsonContent<T>(T value)
        => new(JsonSerializer.Serialize(value, ControllerInstance.Json), System.Text.Encoding.UTF8, "application/json");
}

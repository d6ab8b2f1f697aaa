using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>
/// Issue 9: two controller replicas on one PostgreSQL serve one deployment. Daemons on different replicas reach each other
/// (tickets, signaling and policy pushes cross through LISTEN/NOTIFY), and when a replica dies its daemons move to the other.
/// </summary>
public sealed class ControllerReplicaTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_client_and_its_connector_on_different_replicas_connect_and_the_client_moves_when_its_replica_dies()
    {
        // Heartbeats 5 s apart: a dead replica's sessions go stale only after 15 s, and daemons come back well before that.
        await using var lab = await ClusterLab.StartReplicatedAsync(Ct, "--heartbeat-interval", "5");
        var a = lab.Controller;
        var b = lab.Replica!;
        await lab.AddConnectorAsync("c1", extra: ["--controller", b.Url]);
        Assert.Equal("b", (await a.ConnectorAsync("c1")).Replica);
        var client = await lab.AddClientAsync(controllers: $"{a.Url},{b.Url}");
        var status = await client.StatusAsync();
        Assert.Equal(a.Url, status.GetProperty("controller").GetString()?.TrimEnd('/'));

        // The client asks replica a for a relay ticket; the connector hears of it only through replica b.
        await client.EchoAsync(Ct);
        Assert.Equal([lab.IdentityOf("c1")], await client.ConnectedToAsync());
        // A direct path needs both ends' candidates, which cross from a to b and back.
        var direct = await ConnectorClusterTests.WaitForDirectAsync(client, lab);
        TestContext.Current.TestOutputHelper?.WriteLine(direct ? "direct path across replicas" : "this host offers no address for a direct path; relayed only");

        // A policy change made through replica b reaches the client's session on replica a.
        await using var other = new EchoServer(System.Net.IPAddress.Parse("127.0.0.3"));
        await b.AdminAsync("resource", "add", "127.0.0.3", "--network", "corp", "--name", "svc3", "--tcp", other.Port.ToString(System.Globalization.CultureInfo.InvariantCulture));
        await b.AdminAsync("policy", "grant", "svc3", "--service-account", "app");
        await ConnectorClusterTests.WaitForAsync(async () => (await client.StatusAsync()).GetProperty("resources").EnumerateArray()
            .Any(r => r.GetProperty("name").GetString() == "svc3"), TimeSpan.FromSeconds(10), "the grant made on replica b to reach the client on replica a", lab);

        // Replica b, which does not hold the client's session, still shows it online with the paths its client reported to a.
        await ConnectorClusterTests.WaitForAsync(async () =>
        {
            var device = (await b.AdminJsonAsync<System.Text.Json.JsonElement>("device", "list")).EnumerateArray().Single();
            return device.GetProperty("online").GetBoolean() && device.GetProperty("paths").GetArrayLength() == 1;
        }, TimeSpan.FromSeconds(10), "replica b to show the device online with its path", lab);

        // Replica a dies with a flow open: the flow never needed it, and the client (and the relay) move to b.
        await using var flow = await LongFlow.OpenAsync(client.Forwards[0], Ct);
        await a.StopAsync(crash: true);
        await flow.RoundTripAsync(Ct);
        await ConnectorClusterTests.WaitForAsync(async () =>
        {
            await flow.RoundTripAsync(Ct);
            var now = await client.StatusAsync();
            return now.GetProperty("connected").GetBoolean() && now.GetProperty("controller").GetString()?.TrimEnd('/') == b.Url;
        }, TimeSpan.FromSeconds(30), "the client's session to move to replica b", lab);
        // The relay's session was held by the dead replica: b takes it over at once instead of waiting for it to go stale.
        await b.Process.WaitForLineAsync(l => l.Contains("is back through this replica; replica a, which held its session, is gone", StringComparison.Ordinal),
            TimeSpan.FromSeconds(12), "the relay's session taken over by replica b");
        await b.Process.WaitForLineAsync(l => l.Contains("'r1' online from", StringComparison.Ordinal), TimeSpan.FromSeconds(5), "the relay online through replica b");
        await client.EchoAsync(Ct);
        await flow.RoundTripAsync(Ct);
        Assert.True(flow.Bytes >= 3 * 16 * 1024, $"the long flow carried {flow.Bytes} bytes");

        // A new client, only on b now, reaches the connector through the relay that moved.
        var late = await lab.AddClientAsync(controllers: b.Url);
        await ConnectorClusterTests.RetryAsync(() => late.EchoAsync(Ct), TimeSpan.FromSeconds(20), lab);
    }

    [Fact]
    public async Task Two_replicas_with_one_id_on_one_database_are_refused_with_the_reason()
    {
        await using var lab = await ClusterLab.StartReplicatedAsync(Ct);
        var again = await FerryCli.RunAsync(["controller", "--data", Directory.CreateTempSubdirectory("ferry-ctl-").FullName, "--listen", "127.0.0.1:0",
            "--replica-id", "b", "--database", lab.Controller.DatabaseConnectionString!], timeout: TimeSpan.FromSeconds(60));
        Assert.NotEqual(0, again.ExitCode);
        Assert.Contains("another controller replica with id 'b' is running on this database; give each replica its own --replica-id", again.Stderr, StringComparison.Ordinal);
    }
}

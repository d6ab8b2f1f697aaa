using System.Diagnostics;
using System.Net;
using System.Text.Json;
using Ferry.Core.Api;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>
/// Issue 7: the connectors of one network as a cluster (real controller, relay, connector and client processes on loopback):
/// clients spread across them and stay put, fail over within 3 s when theirs dies, pick up connectors added and removed,
/// prefer the nearest, hold connectors of several networks at once, and keep working while the controller is down.
/// </summary>
public sealed class ConnectorClusterTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    // Geographic routing: Amsterdam and Washington connectors, Frankfurt and New York clients.
    private const string Amsterdam = "52.37,4.90";
    private const string Washington = "38.90,-77.04";
    private const string Frankfurt = "50.11,8.68";
    private const string NewYork = "40.71,-74.01";

    [Fact]
    public async Task Twenty_clients_spread_over_two_connectors_and_each_stays_on_one()
    {
        await using var lab = await ClusterLab.StartAsync(Ct);
        await lab.AddConnectorAsync("c1");
        await lab.AddConnectorAsync("c2");
        var clients = await lab.AddClientsAsync(20);

        // Each client's first flow picks its connector; a second round must land on the same one.
        foreach (var client in clients)
        {
            await client.EchoAsync(Ct);
        }
        var first = new Dictionary<ClusterClient, string>();
        foreach (var client in clients)
        {
            var connected = await client.ConnectedToAsync();
            Assert.True(connected.Length == 1, $"{client.Process.Name} must hold exactly one connector, holds [{string.Join(", ", connected)}]");
            first[client] = connected[0];
        }
        foreach (var client in clients)
        {
            await client.EchoAsync(Ct);
            await client.EchoAsync(Ct);
        }
        foreach (var client in clients)
        {
            var connected = await client.ConnectedToAsync();
            Assert.Equal([first[client]], connected);
            Assert.Equal(first[client], await client.RouteAsync());
        }

        var perConnector = first.Values.GroupBy(c => c).ToDictionary(g => lab.NameOf(g.Key), g => g.Count());
        var shares = string.Join(", ", perConnector.Select(p => $"{p.Key}: {p.Value}"));
        TestContext.Current.TestOutputHelper?.WriteLine($"clients per connector: {shares}");
        Assert.True(perConnector.GetValueOrDefault("c1") >= 5 && perConnector.GetValueOrDefault("c2") >= 5, $"both connectors must carry at least a quarter of 20 clients; got {shares}");

        // The connectors report the same load to the controller, which shows it and routes new clients by it.
        foreach (var (name, count) in perConnector)
        {
            await lab.Controller.WaitForConnectorAsync(name, v => v.Clients == count, TimeSpan.FromSeconds(15), $"reporting {count} clients");
        }
    }

    /// <remarks>
    /// Killed, the connector's controller session closes at once and the controller's new list moves the client. Frozen
    /// (SIGSTOP, as a hung host), the controller notices only after three heartbeats; the client must see for itself that
    /// the connection acknowledges nothing and move on.
    /// </remarks>
    [Theory]
    [InlineData("killed")]
    [InlineData("frozen")]
    public async Task When_the_connector_a_client_uses_dies_its_next_flows_go_to_the_other_within_3_s_and_the_others_are_left_alone(string how)
    {
        await using var lab = await ClusterLab.StartAsync(Ct);
        await lab.AddConnectorAsync("c1");
        await lab.AddConnectorAsync("c2");
        var byConnector = await PlaceClientsOnEveryConnectorAsync(lab, ["c1", "c2"]);
        var victim = byConnector["c1"];
        var bystander = byConnector["c2"];

        // A flow of a client on the surviving connector runs across the kill and must not notice it.
        await using var running = await LongFlow.OpenAsync(bystander.Forwards[0], Ct);
        if (how == "killed")
        {
            lab.Connector("c1").Kill();
        }
        else
        {
            lab.Connector("c1").Send(UnixSignal.Stop);
        }
        var killed = Stopwatch.StartNew();
        var deadline = TimeSpan.FromSeconds(3);
        var failures = new List<string>();
        while (true)
        {
            try
            {
                using var attempt = CancellationTokenSource.CreateLinkedTokenSource(Ct);
                attempt.CancelAfter(deadline - killed.Elapsed + TimeSpan.FromMilliseconds(1));
                await victim.EchoAsync(attempt.Token);
                break;
            }
            catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or OperationCanceledException or TimeoutException && !Ct.IsCancellationRequested)
            {
                failures.Add($"{killed.ElapsedMilliseconds} ms: {e.Message}");
                Assert.True(killed.Elapsed < deadline, $"no flow got through within 3 s after c1 was {how}: {string.Join("; ", failures)}\n{lab.Logs()}");
            }
        }
        var failedOver = killed.Elapsed;
        TestContext.Current.TestOutputHelper?.WriteLine($"first flow through c2 done {failedOver.TotalMilliseconds:0} ms after c1 was {how}; failed attempts: {failures.Count}");
        ClusterLab.RecordFailover($"connector {how}", failedOver, victim);
        Assert.Equal(lab.IdentityOf("c2"), await victim.RouteAsync());
        Assert.Contains(lab.IdentityOf("c2"), await victim.ConnectedToAsync());

        // Later flows keep going to the survivor, and the bystander's flow carried on throughout.
        for (var i = 0; i < 5; i++)
        {
            await victim.EchoAsync(Ct);
            await running.RoundTripAsync(Ct);
        }
        Assert.Equal([lab.IdentityOf("c2")], await bystander.ConnectedToAsync());
    }

    [Fact]
    public async Task A_third_connector_draws_new_clients_and_removing_one_moves_its_clients()
    {
        await using var lab = await ClusterLab.StartAsync(Ct);
        await lab.AddConnectorAsync("c1");
        await lab.AddConnectorAsync("c2");
        var byConnector = await PlaceClientsOnEveryConnectorAsync(lab, ["c1", "c2"]);
        var existing = lab.Clients.ToList();
        var before = new Dictionary<ClusterClient, string?>();
        foreach (var client in existing)
        {
            before[client] = await client.RouteAsync();
        }

        await lab.AddConnectorAsync("c3");
        // Running clients learn of c3 without a restart; new ones go there (it is the least loaded).
        ClusterClient? onThird = null;
        for (var i = 0; i < 6 && onThird is null; i++)
        {
            var fresh = await lab.AddClientAsync();
            await fresh.EchoAsync(Ct);
            if (await fresh.RouteAsync() == lab.IdentityOf("c3"))
            {
                onThird = fresh;
            }
        }
        Assert.True(onThird is not null, "no new client used the third connector\n" + lab.Logs());
        foreach (var client in existing)
        {
            var online = (await client.StatusAsync()).GetProperty("routes")[0].GetProperty("online").EnumerateArray().Select(e => e.GetString()).ToList();
            Assert.Contains(lab.IdentityOf("c3"), online);
            // Clients already placed stay where they are.
            await client.EchoAsync(Ct);
            Assert.Equal(before[client], await client.RouteAsync());
        }

        // Removing c1: its session ends, it stops, and its clients' next flows go elsewhere.
        var moved = byConnector["c1"];
        await lab.Controller.AdminAsync("connector", "remove", "c1");
        Assert.NotEqual(0, await lab.Connector("c1").WaitForExitAsync(TimeSpan.FromSeconds(15)));
        await RetryAsync(() => moved.EchoAsync(Ct), TimeSpan.FromSeconds(10), lab);
        var route = await moved.RouteAsync();
        Assert.True(route == lab.IdentityOf("c2") || route == lab.IdentityOf("c3"), $"the removed connector's client must move to c2 or c3, not {route}");
        Assert.DoesNotContain(lab.IdentityOf("c1"), await moved.ConnectedToAsync());
    }

    [Fact]
    public async Task A_client_uses_the_nearest_connector_and_the_next_nearest_once_it_dies()
    {
        await using var lab = await ClusterLab.StartAsync(Ct);
        await lab.AddConnectorAsync("ams", Amsterdam);
        await lab.AddConnectorAsync("iad", Washington);
        // Whatever the hashing says, each client goes to its nearer connector, even when it is the more loaded one.
        var europe = new List<ClusterClient>();
        for (var i = 0; i < 3; i++)
        {
            var client = await lab.AddClientAsync(Frankfurt);
            await client.EchoAsync(Ct);
            Assert.Equal(lab.IdentityOf("ams"), await client.RouteAsync());
            europe.Add(client);
        }
        var america = await lab.AddClientAsync(NewYork);
        await america.EchoAsync(Ct);
        Assert.Equal(lab.IdentityOf("iad"), await america.RouteAsync());
        Assert.Equal(Frankfurt, (await europe[0].StatusAsync()).GetProperty("location").GetString());

        // Where this host has an address to offer, the connection goes direct first: a dead connector then sends nothing at
        // all (no relay in between), and only the client's own watch on the connection tells it so.
        var direct = await WaitForDirectAsync(europe[0], lab);
        lab.Connector("ams").Kill();
        var killed = Stopwatch.StartNew();
        await RetryAsync(() => europe[0].EchoAsync(Ct), TimeSpan.FromSeconds(3), lab);
        TestContext.Current.TestOutputHelper?.WriteLine($"Frankfurt client ({(direct ? "direct" : "relayed")}) through Washington {killed.ElapsedMilliseconds} ms after Amsterdam died");
        ClusterLab.RecordFailover(direct ? "nearest killed, direct path" : "nearest killed, relayed path", killed.Elapsed, europe[0]);
        Assert.Equal(lab.IdentityOf("iad"), await europe[0].RouteAsync());
        await america.EchoAsync(Ct);
        Assert.Equal(lab.IdentityOf("iad"), await america.RouteAsync());
    }

    [Fact]
    public async Task A_client_holds_connectors_of_two_networks_at_once()
    {
        await using var lab = await ClusterLab.StartAsync(Ct);
        await lab.AddConnectorAsync("corp1");
        // A second network with its own service (on another loopback address, so the two resources cannot be confused).
        await using var labEcho = new EchoServer(IPAddress.Parse("127.0.0.2"));
        var labPort = labEcho.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        await lab.Controller.AdminAsync("network", "create", "lab");
        await lab.Controller.AdminAsync("resource", "add", "127.0.0.2", "--network", "lab", "--name", "lab-svc", "--tcp", labPort);
        await lab.Controller.AdminAsync("policy", "grant", "lab-svc", "--service-account", "app");
        await lab.AddConnectorAsync("lab1", network: "lab");
        var client = await lab.AddClientAsync(null, null, $"0=127.0.0.2:{labPort}");

        // Long flows in both networks at the same time, each checked byte for byte.
        await using var corp = await LongFlow.OpenAsync(client.Forwards[0], Ct);
        await using var other = await LongFlow.OpenAsync(client.Forwards[1], Ct);
        for (var i = 0; i < 20; i++)
        {
            await Task.WhenAll(corp.RoundTripAsync(Ct), other.RoundTripAsync(Ct));
        }
        Assert.Equal(new[] { lab.IdentityOf("corp1"), lab.IdentityOf("lab1") }.Order(StringComparer.Ordinal), (await client.ConnectedToAsync()).Order(StringComparer.Ordinal));
        var routes = (await client.StatusAsync()).GetProperty("routes").EnumerateArray().ToDictionary(r => r.GetProperty("network").GetString()!, r => r.GetProperty("connector").GetString());
        Assert.Equal(lab.IdentityOf("corp1"), routes["corp"]);
        Assert.Equal(lab.IdentityOf("lab1"), routes["lab"]);
    }

    [Fact]
    public async Task While_the_controller_is_down_flows_keep_going_and_new_ones_open_and_its_return_restores_every_session()
    {
        await using var lab = await ClusterLab.StartAsync(Ct);
        // Both daemons are given a dead controller address first: they must move on to the live one.
        var controllers = $"https://127.0.0.1:{ClosedPort()},{lab.Controller.Url}";
        await lab.AddConnectorAsync("c1", null, "corp", "--controller", controllers);
        var client = await lab.AddClientAsync(null, controllers);
        await client.EchoAsync(Ct);
        Assert.Contains("cannot reach the controller at https://127.0.0.1:", client.Process.Output, StringComparison.Ordinal);
        await using var running = await LongFlow.OpenAsync(client.Forwards[0], Ct);

        await lab.Controller.StopAsync(crash: true);
        await WaitForAsync(async () => !(await client.StatusAsync()).GetProperty("connected").GetBoolean(), TimeSpan.FromSeconds(30), "the client to notice the controller is gone", lab);
        // The open flow keeps flowing, and new flows open on the connection the client holds.
        for (var i = 0; i < 10; i++)
        {
            await running.RoundTripAsync(Ct);
            await client.EchoAsync(Ct);
        }
        Assert.Equal([lab.IdentityOf("c1")], await client.ConnectedToAsync());

        await lab.Controller.StartAgainAsync();
        await lab.Controller.WaitForConnectorAsync("c1", v => v.State == "online", TimeSpan.FromSeconds(30), "back online after the controller returned");
        await WaitForAsync(async () => (await client.StatusAsync()).GetProperty("connected").GetBoolean(), TimeSpan.FromSeconds(30), "the client's session to resume", lab);
        // The control plane works again end to end: a grant made now reaches the running client and the connector.
        await using var second = new EchoServer(IPAddress.Parse("127.0.0.3"));
        var secondPort = second.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        await lab.Controller.AdminAsync("resource", "add", "127.0.0.3", "--network", "corp", "--name", "svc2", "--tcp", secondPort);
        await lab.Controller.AdminAsync("policy", "grant", "svc2", "--service-account", "app");
        await WaitForAsync(async () => (await client.StatusAsync()).GetProperty("resources").EnumerateArray().Any(r => r.GetProperty("name").GetString() == "svc2"),
            TimeSpan.FromSeconds(15), "the new grant to reach the client", lab);
        var added = await FerryCli.RunAsync(["client", "--state", client.State, "forward", "0", $"127.0.0.3:{secondPort}"]);
        Assert.True(added.ExitCode == 0, added.ToString());
        var listening = added.Stdout.Split(' ')[1];
        var extra = new ClusterClient(client.Process, client.State) { Forwards = [IPEndPoint.Parse(listening)] };
        await extra.EchoAsync(Ct);
        await running.RoundTripAsync(Ct);
        Assert.DoesNotContain("Unhandled exception", client.Process.Output + lab.Connector("c1").Output, StringComparison.Ordinal);
        Assert.False(client.Process.HasExited || lab.Connector("c1").HasExited, "no daemon may have restarted");
    }

    [Fact]
    public async Task Connectors_that_resolve_a_resource_differently_are_flagged_by_the_controller()
    {
        Assert.SkipUnless(Dnsmasq.IsInstalled, "dnsmasq is not installed (apt-get install dnsmasq-base); the test gives each connector its own DNS server");
        await using var lab = await ClusterLab.StartAsync(Ct);
        var port = lab.Echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        await using var knows = await Dnsmasq.StartAsync(new Dictionary<string, string> { ["db.corp.test"] = "127.0.0.1" }, Ct);
        await using var doesNot = await Dnsmasq.StartAsync(new Dictionary<string, string> { ["other.corp.test"] = "127.0.0.1" }, Ct);
        await lab.Controller.AdminAsync("resource", "add", "db.corp.test", "--network", "corp", "--name", "db", "--tcp", port);
        await lab.AddConnectorAsync("c1", null, "corp", "--dns-server", knows.EndPoint.ToString());
        await lab.AddConnectorAsync("c2", null, "corp", "--dns-server", doesNot.EndPoint.ToString());

        ResourceView[] resources = [];
        await WaitForAsync(async () =>
        {
            resources = await lab.Controller.AdminJsonAsync<ResourceView[]>("resource", "list");
            return resources.Any(r => r.Name == "db" && r.Warning is not null);
        }, TimeSpan.FromSeconds(30), "the controller to flag resource db", lab);
        var warning = resources.Single(r => r.Name == "db").Warning!;
        Assert.Contains("c1 ok", warning, StringComparison.Ordinal);
        Assert.Contains("c2 unresolvable", warning, StringComparison.Ordinal);
        // A resource both reach alike is not flagged.
        Assert.Null(resources.Single(r => r.Name == "svc").Warning);
        var c2 = await lab.Controller.ConnectorAsync("c2");
        Assert.Contains(c2.Resources, r => r.Resource == "db" && r.Status == "unresolvable");
        Assert.Contains(c2.Resources, r => r.Resource == "svc" && r.Status == "ok");
        await lab.Controller.Process.WaitForLineAsync(l => l.Contains("Resource db of network corp: connectors disagree", StringComparison.Ordinal), TimeSpan.FromSeconds(10), "the disagreement logged");
        var table = await lab.Controller.AdminAsync("resource", "list");
        Assert.Contains("connectors disagree", table, StringComparison.Ordinal);
    }

    /// <summary>Starts clients (at most 12) until each named connector carries at least one; returns one client per connector.</summary>
    private static async Task<Dictionary<string, ClusterClient>> PlaceClientsOnEveryConnectorAsync(ClusterLab lab, string[] connectors)
    {
        var placed = new Dictionary<string, ClusterClient>(StringComparer.Ordinal);
        for (var i = 0; i < 12 && placed.Count < connectors.Length; i++)
        {
            var client = await lab.AddClientAsync();
            await client.EchoAsync(Ct);
            var route = await client.RouteAsync();
            Assert.NotNull(route);
            placed.TryAdd(lab.NameOf(route), client);
        }
        Assert.True(placed.Count == connectors.Length, $"12 clients did not cover every connector: {string.Join(", ", placed.Keys)}");
        return placed;
    }

    /// <summary>Keeps the client's connection busy until its path is direct (bounded: 20 s); false when this host offers no address for one.</summary>
    internal static async Task<bool> WaitForDirectAsync(ClusterClient client, ClusterLab lab)
    {
        var hasAddress = System.Net.NetworkInformation.NetworkInterface.GetAllNetworkInterfaces()
            .Where(n => n.OperationalStatus == System.Net.NetworkInformation.OperationalStatus.Up && n.NetworkInterfaceType != System.Net.NetworkInformation.NetworkInterfaceType.Loopback)
            .SelectMany(n => n.GetIPProperties().UnicastAddresses)
            .Any(u => u.Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork && !IPAddress.IsLoopback(u.Address));
        if (!hasAddress)
        {
            return false;
        }
        await WaitForAsync(async () =>
        {
            await client.EchoAsync(Ct);
            return (await client.StatusAsync()).GetProperty("paths").EnumerateArray().Any(p => p.GetProperty("kind").GetString() == "direct");
        }, TimeSpan.FromSeconds(20), "the path to become direct", lab);
        return true;
    }

    internal static async Task RetryAsync(Func<Task> flow, TimeSpan within, ClusterLab lab)
    {
        var clock = Stopwatch.StartNew();
        var failures = new List<string>();
        while (true)
        {
            try
            {
                await flow().WaitAsync(within - clock.Elapsed + TimeSpan.FromSeconds(1), Ct);
                Assert.True(clock.Elapsed <= within, $"the flow took {clock.ElapsedMilliseconds} ms, more than {within.TotalSeconds} s; failures before: {string.Join("; ", failures)}");
                return;
            }
            catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or TimeoutException && !Ct.IsCancellationRequested)
            {
                failures.Add($"{clock.ElapsedMilliseconds} ms: {e.Message}");
                Assert.True(clock.Elapsed < within, $"no flow got through within {within.TotalSeconds} s: {string.Join("; ", failures)}\n{lab.Logs()}");
                await Task.Delay(50, Ct);
            }
        }
    }

    internal static async Task WaitForAsync(Func<Task<bool>> condition, TimeSpan timeout, string what, ClusterLab lab)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out after {timeout.TotalSeconds} s waiting for {what}\n{lab.Logs()}");
            await Task.Delay(200, Ct);
        }
    }

    private static int ClosedPort()
    {
        var listener = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }
}

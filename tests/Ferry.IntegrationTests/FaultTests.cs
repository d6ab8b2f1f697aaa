using System.Globalization;
using System.Net;
using Dapper;
using Ferry.Core.Tokens;
using Ferry.IntegrationTests.Infrastructure;
using Microsoft.Data.Sqlite;
using Npgsql;

namespace Ferry.IntegrationTests;

/// <summary>
/// Issue 11: process faults on real processes — the controller's database connections killed under load, the controller
/// killed -9 in the middle of admin writes and of a connector's first token exchange, a connector killed -9 while its
/// tokens rotate. Each states what must hold afterwards and checks it.
/// </summary>
public sealed class FaultTests(ITestOutputHelper output)
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Must hold while PostgreSQL ends every controller connection again and again: no acknowledged write is lost, a failed
    /// write is a 5xx problem+json (never a crash or a bare 500), readyz comes back, the connector and client sessions stay
    /// or come back, and byte-checked flows through client and connector keep working, during the faults and after.
    /// </summary>
    [Fact]
    public async Task Postgresql_connections_killed_under_admin_writes_lose_no_acknowledged_write_and_flows_keep_working()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Postgres);
        await using var echo = new EchoServer(IPAddress.Loopback);
        await using var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", echo.Port.ToString(CultureInfo.InvariantCulture), Ct);
        var client = await StartClientAsync(controller, deployment, echo.Port);
        // The forward listens before the client has a path to the connector: the first flow is retried until there is one.
        await PollAsync(async () =>
        {
            try
            {
                await client.EchoAsync(Ct);
                return true;
            }
            catch (Exception e) when (e is EndOfStreamException or IOException or System.Net.Sockets.SocketException or TimeoutException)
            {
                return false;
            }
        }, "a first flow through the client");
        await AdminWriteLoad.PrepareAsync(controller);

        var load = new AdminWriteLoad();
        var database = new NpgsqlConnectionStringBuilder(controller.DatabaseConnectionString).Database!;
        await using var pg = new NpgsqlConnection(TestDatabase.PostgresAdmin);
        await pg.OpenAsync(Ct);
        using var stop = new CancellationTokenSource();
        var writes = load.RunAsync(controller, "pg", writers: 3, maxChains: 500, stop.Token);
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(4);
        int rounds = 0, terminated = 0, caughtWriting = 0;
        var killer = Task.Run(async () =>
        {
            await using var lockHolder = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(TestDatabase.PostgresAdmin) { Database = database }.ConnectionString);
            await lockHolder.OpenAsync(Ct);
            while (DateTime.UtcNow < until)
            {
                rounds++;
                // Idle pooled connections that were ended are dropped quietly by the driver; to end connections in the middle
                // of a write, hold the written tables locked until a write waits on them, then end every connection.
                await using (var tx = await lockHolder.BeginTransactionAsync(Ct))
                {
                    await lockHolder.ExecuteAsync("LOCK TABLE networks, resources, policies IN EXCLUSIVE MODE", transaction: tx);
                    var waitUntil = DateTime.UtcNow + TimeSpan.FromSeconds(1);
                    while (DateTime.UtcNow < waitUntil && await pg.QuerySingleAsync<int>(
                        "SELECT count(*)::int FROM pg_stat_activity WHERE datname = @database AND wait_event_type = 'Lock'", new { database }) == 0)
                    {
                        await Task.Delay(5, Ct);
                    }
                    var waiting = await pg.QuerySingleAsync<int>("SELECT count(*)::int FROM pg_stat_activity WHERE datname = @database AND wait_event_type = 'Lock'", new { database });
                    caughtWriting += waiting;
                    terminated += await pg.QuerySingleAsync<int>(
                        "SELECT count(*)::int FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = @database AND pid <> @holder) t",
                        new { database, holder = lockHolder.ProcessID });
                    await tx.CommitAsync(Ct);
                }
                // Pacing the fault, not waiting for anything: new connections get a moment to be used.
                await Task.Delay(20, Ct);
            }
        }, Ct);
        var flows = 0;
        while (DateTime.UtcNow < until)
        {
            // The data plane does not go through the database: a flow opened now must work.
            await client.EchoAsync(Ct);
            flows++;
        }
        await killer;
        await stop.CancelAsync();
        await writes.WaitAsync(Bound, Ct);
        output.WriteLine($"{rounds} rounds terminated {terminated} backends, {caughtWriting} of them waiting to write; {flows} flows checked during them; writes: {load}");

        Assert.False(controller.Process.HasExited, $"the controller died:\n{controller.Process.Output}");
        Assert.True(terminated > 0, $"no backend terminated in {rounds} rounds: the fault was not injected");
        Assert.True(load.Violations.Count == 0, $"answers that are neither success nor a problem: {string.Join("\n", load.Violations)}");
        Assert.True(caughtWriting > 0 && load.Refused > 0, $"{caughtWriting} connections ended while writing, {load}: the fault did not reach the writes");
        Assert.Equal(0, load.CutOff);
        using (var http = controller.Http(withApiKey: false))
        {
            await PollAsync(async () => (await http.GetAsync("/readyz", Ct)).StatusCode == HttpStatusCode.OK, "readyz 200 again");
        }
        await controller.WaitForConnectorAsync("c1", v => v.State == "online", Bound, "online after the database faults");
        await PollAsync(() => ClientConnectedAsync(client), "the client connected");
        await client.EchoAsync(Ct);
        await load.AssertVisibleAsync(controller, "after the database faults");
        await AdminWriteLoad.AssertPostgresAsync(controller.DatabaseConnectionString!, "after the database faults");
        // Writes work again once connections can be made.
        await controller.AdminAsync("network", "create", "after-faults");
    }

    /// <summary>
    /// Must hold after the controller is killed -9 at a random moment of concurrent multi-row admin writes and started again
    /// on the same state: every write acknowledged before the kill is there, no change is half written (a resource without
    /// its network, a grant without its resource, a connector without its tokens, a network without the MFA it was
    /// created with), and for SQLite the file passes integrity_check and is in WAL mode.
    /// </summary>
    [Theory]
    [InlineData(StoreKind.Sqlite, 10)]
    [InlineData(StoreKind.Postgres, 5)]
    public async Task Controller_killed_at_random_points_of_admin_writes_keeps_every_acknowledged_write_and_no_half_change(StoreKind store, int kills)
    {
        await using var controller = await ControllerInstance.StartAsync(store);
        await AdminWriteLoad.PrepareAsync(controller);
        var load = new AdminWriteLoad();
        var seed = Random.Shared.Next();
        var random = new Random(seed);
        var inFlightAtKill = new List<int>();
        for (var kill = 1; kill <= kills; kill++)
        {
            var context = $"{store} kill {kill} of {kills} (seed {seed})";
            using var stop = new CancellationTokenSource();
            var writes = load.RunAsync(controller, $"k{kill}", writers: 4, maxChains: 100, stop.Token);
            // The kill lands at a random moment by design; nothing is being waited for.
            await Task.Delay(random.Next(20, 600), Ct);
            inFlightAtKill.Add(load.InFlight);
            await controller.StopAsync(crash: true);
            await stop.CancelAsync();
            await writes.WaitAsync(Bound, Ct);
            if (store == StoreKind.Sqlite)
            {
                await AdminWriteLoad.AssertSqliteFileAsync(controller.DataDirectory, context);
            }
            else
            {
                await AdminWriteLoad.AssertPostgresAsync(controller.DatabaseConnectionString!, context);
            }
            await controller.StartAgainAsync();
            await load.AssertVisibleAsync(controller, context);
        }
        output.WriteLine($"{store}: {kills} kills (seed {seed}), writes in flight at each: {string.Join(",", inFlightAtKill)}; {load}");
        // Most kills must land on writes under way, or the test proves little.
        Assert.True(inFlightAtKill.Count(n => n > 0) >= kills / 2, $"only {inFlightAtKill.Count(n => n > 0)} of {kills} kills hit a write in flight");
    }

    /// <summary>
    /// Must hold when the controller is killed -9 while a just-started connector exchanges its provisioned pair for its first
    /// rotated one: once the controller is back the connector is online with working tokens (or exits saying to re-provision,
    /// never hangs silently), and the provisioned pair is dead: a second process started with a copy of it is refused.
    /// </summary>
    [Fact]
    public async Task Controller_killed_during_a_connectors_first_token_exchange_leaves_it_online_and_the_provisioned_pair_single_use()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await controller.AdminAsync("network", "create", "corp");
        var dir = Directory.CreateTempSubdirectory("ferry-fault-").FullName;
        // Kill points: -1 is the instant the controller has stored the new pair (before the connector can have saved it);
        // the others are milliseconds after the connector process starts, spanning its start-up, the exchange and the session.
        int[] killAt = [-1, 0, 300, -1, 900];
        var phases = new List<string>();
        for (var i = 0; i < killAt.Length; i++)
        {
            var name = $"p{i}";
            var tokensPath = await controller.ProvisionAsync("corp", name, dir);
            var provisioned = TokenFile.Read(tokensPath);
            var copy = Path.Combine(dir, $"{name}-copy.tokens.json");
            File.Copy(tokensPath, copy);

            var clock = System.Diagnostics.Stopwatch.StartNew();
            await using var connector = controller.StartConnector(tokensPath);
            if (killAt[i] < 0)
            {
                await WaitForPendingPairAsync(controller, provisioned.Id);
            }
            else
            {
                await Task.Delay(killAt[i], Ct);
            }
            await controller.StopAsync(crash: true);
            var saved = TokenFile.Read(tokensPath).RefreshToken != provisioned.RefreshToken;
            var wasOnline = connector.Output.Contains("Online as", StringComparison.Ordinal);
            phases.Add($"{killAt[i]}ms:{(wasOnline ? "online" : saved ? "saved" : "unsaved")}");
            await controller.StartAgainAsync();
            var restarted = clock.Elapsed;

            var context = $"kill point {i} ({killAt[i]} ms, {phases[^1]})";
            var deadline = DateTime.UtcNow + Bound;
            while (true)
            {
                if ((await controller.ConnectorAsync(name)).State == "online")
                {
                    break;
                }
                if (connector.HasExited)
                {
                    // The acceptable alternative to coming back: a clear instruction, not a silent death.
                    Assert.Contains("provision", connector.Output, StringComparison.Ordinal);
                    Assert.NotEqual(0, await connector.WaitForExitAsync(Bound));
                    break;
                }
                Assert.True(DateTime.UtcNow < deadline, $"{context}: connector neither online nor exited with a reason within {Bound.TotalSeconds} s:\n{connector.Output}\ncontroller:\n{controller.Process.Output}");
                await Task.Delay(100, Ct);
            }
            output.WriteLine($"{context}: controller back after {restarted.TotalSeconds:0.0} s, connector online after {clock.Elapsed.TotalSeconds:0.0} s");
            Assert.False(connector.HasExited, $"{context}: the connector gave up although the controller came back:\n{connector.Output}");
            Assert.NotEqual(provisioned.RefreshToken, TokenFile.Read(tokensPath).RefreshToken);

            // The provisioned pair is spent: a copy of it is refused with the reason, and the connector keeps its session.
            await using var second = controller.StartConnector(copy);
            Assert.NotEqual(0, await second.WaitForExitAsync(Bound));
            Assert.Contains("already used", second.Output, StringComparison.Ordinal);
            Assert.Equal("online", (await controller.ConnectorAsync(name)).State);
        }
        output.WriteLine($"kill points (ms after start: connector state at the kill): {string.Join(", ", phases)}");
        Assert.Contains(phases, p => p.EndsWith(":unsaved", StringComparison.Ordinal));
    }

    /// <summary>
    /// Must hold when a connector whose tokens rotate at every start (over HTTP, then again over the session because the
    /// access lifetime is short) is killed -9 twenty times at random moments: after every kill the tokens file parses,
    /// every restart comes back online, and no temporary file from an interrupted write is left beside the tokens.
    /// </summary>
    [Fact]
    public async Task Connector_killed_twenty_times_while_its_tokens_rotate_keeps_a_readable_tokens_file_and_comes_back_online()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite, "--access-token-lifetime", "600");
        await controller.AdminAsync("network", "create", "corp");
        var dir = Directory.CreateTempSubdirectory("ferry-fault-").FullName;
        var tokensPath = await controller.ProvisionAsync("corp", "c1", dir);
        var id = TokenFile.Read(tokensPath).Id;
        // What a writer killed between creating its temporary file and renaming it leaves: half a file, named after its process.
        var debris = Path.Combine(dir, $".c1.tokens.json.{int.MaxValue}.{Guid.NewGuid():N}.tmp");
        await File.WriteAllTextAsync(debris, (await File.ReadAllTextAsync(tokensPath, Ct))[..40], Ct);

        var seed = Random.Shared.Next();
        var random = new Random(seed);
        var pairs = new HashSet<string>(StringComparer.Ordinal) { TokenFile.Read(tokensPath).RefreshToken };
        var killedOnline = 0;
        for (var kill = 1; kill <= 20; kill++)
        {
            var context = $"kill {kill} (seed {seed})";
            await using var connector = controller.StartConnector(tokensPath);
            if (kill % 2 == 0)
            {
                // Every other restart must come back online; it is then killed right after, while the session rotates.
                await connector.WaitForLineAsync(l => l.Contains("Online as", StringComparison.Ordinal), Bound, $"online ({context})");
                await Task.Delay(random.Next(0, 300), Ct);
            }
            else
            {
                await Task.Delay(random.Next(0, 1500), Ct);
            }
            killedOnline += connector.Output.Contains("Online as", StringComparison.Ordinal) ? 1 : 0;
            connector.Kill();
            await connector.WaitForExitAsync(Bound);

            var tokens = TokenFile.Read(tokensPath);
            Assert.Equal(id, tokens.Id);
            pairs.Add(tokens.RefreshToken);
        }
        await using (var last = controller.StartConnector(tokensPath))
        {
            await controller.WaitForConnectorAsync("c1", v => v.State == "online", Bound, "online after twenty kills");
            await last.WaitForLineAsync(l => l.Contains("Tokens rotated and saved", StringComparison.Ordinal), Bound, "tokens saved");
        }
        output.WriteLine($"20 kills (seed {seed}), {killedOnline} after the session was up; {pairs.Count} distinct pairs on disk across them");
        Assert.Empty(Directory.GetFiles(dir, "*.tmp"));
        // Rotation really happened across the kills, so the kills met it.
        Assert.True(pairs.Count >= 10, $"only {pairs.Count} distinct pairs seen");
    }

    private static async Task<ClusterClient> StartClientAsync(ControllerInstance controller, TestDeployment deployment, int port)
    {
        var state = Path.Combine(deployment.Directory, "client");
        var process = FerryProcess.Start("client", ["client", "--state", state, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint,
            "--socks", "off", "--device-name", "d0", "--forward", $"0=127.0.0.1:{port}"],
            new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = deployment.ServiceAccountKey });
        var line = await process.WaitForLineAsync(l => l.Contains("] forward ", StringComparison.Ordinal) && l.Contains(" listening on ", StringComparison.Ordinal), Bound, "the forward");
        return new ClusterClient(process, state) { Forwards = [IPEndPoint.Parse(line[(line.LastIndexOf(' ') + 1)..])] };
    }

    /// <summary>Polls the controller's SQLite file (WAL lets a reader in beside it) until the daemon has an unconfirmed pair.</summary>
    private static async Task WaitForPendingPairAsync(ControllerInstance controller, string daemonId)
    {
        var file = Path.Combine(controller.DataDirectory, "ferry.db");
        await using var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = file, Mode = SqliteOpenMode.ReadOnly, Pooling = false }.ToString());
        await db.OpenAsync(Ct);
        var deadline = DateTime.UtcNow + Bound;
        while (await db.QuerySingleAsync<long>("SELECT count(*) FROM tokens WHERE owner_id = @daemonId AND state = 'pending'", new { daemonId }) == 0)
        {
            Assert.True(DateTime.UtcNow < deadline, "the controller never stored a rotated pair");
            await Task.Delay(1, Ct);
        }
    }

    /// <summary>Whether the client says it holds its session; a status call that fails (a busy machine) counts as not yet.</summary>
    private static async Task<bool> ClientConnectedAsync(ClusterClient client)
    {
        var status = await FerryCli.RunAsync(["client", "--state", client.State, "status"]);
        return status.ExitCode == 0 && System.Text.Json.JsonDocument.Parse(status.Stdout).RootElement.GetProperty("connected").GetBoolean();
    }

    private static async Task PollAsync(Func<Task<bool>> condition, string what)
    {
        var deadline = DateTime.UtcNow + Bound;
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"never {what} within {Bound.TotalSeconds} s");
            await Task.Delay(200, Ct);
        }
    }
}

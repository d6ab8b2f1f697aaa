using System.Globalization;
using System.Text.Json;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>
/// Issue 9: a core that holds the database and listens on nothing, serving daemons through two edges it dials out to.
/// Daemons use either edge; when one dies they move to the other, and edge and core restarts heal on their own.
/// </summary>
public sealed class ControllerEdgeTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_core_behind_two_edges_listens_on_nothing_and_daemons_move_between_edges()
    {
        var dir = Directory.CreateTempSubdirectory("ferry-edges-").FullName;
        var secret = Path.Combine(dir, "edge.secret");
        await File.WriteAllTextAsync(secret, Convert.ToBase64String(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32)), Ct);
        var edges = new[] { await Edge.StartAsync("edge1", secret), await Edge.StartAsync("edge2", secret) };
        ControllerInstance? core = null;
        var processes = new List<FerryProcess>();
        try
        {
            core = await ControllerInstance.StartCoreAsync("--edge", $"{edges[0].Links},{edges[1].Links}", "--edge-secret-file", secret,
                "--public-url", $"{edges[0].Url},{edges[1].Url}");
            await core.Process.WaitForLineAsync(l => l.Contains($"Linked to edge {edges[1].Links}", StringComparison.Ordinal), TimeSpan.FromSeconds(10), "both edges linked");
            Assert.Empty(ListeningSockets(core.Process.Id));
            // The same look finds an edge's two listeners, so the empty answer above is not a blind one.
            Assert.Equal(2, ListeningSockets(edges[0].Process.Id).Count(s => s.StartsWith("tcp", StringComparison.Ordinal)));
            Assert.Equal(edges[0].Url, core.Url);

            // Set-up through edge 1, like any operator would.
            var relay = await TestDeployment.StartRelayAsync(core, dir, Ct, "--controller", $"{edges[0].Url},{edges[1].Url}");
            processes.Add(relay);
            await using var echo = new EchoServer(System.Net.IPAddress.Loopback);
            await core.AdminAsync("network", "create", "corp");
            await core.AdminAsync("resource", "add", "127.0.0.1", "--network", "corp", "--name", "svc", "--tcp", echo.Port.ToString(CultureInfo.InvariantCulture));
            var account = await core.AdminJsonAsync<JsonElement>("service-account", "create", "app");
            await core.AdminAsync("policy", "grant", "svc", "--service-account", "app");
            // The connector prefers edge 2, the client edge 1: sessions through both edges meet at the core.
            var connector = core.StartConnector(await core.ProvisionAsync("corp", "c1", dir), "--controller", $"{edges[1].Url},{edges[0].Url}");
            processes.Add(connector);
            var online = await core.WaitForConnectorAsync("c1", v => v.State == "online", TimeSpan.FromSeconds(30), "online through edge 2");
            var client = FerryProcess.Start("client", ["client", "--state", Path.Combine(dir, "client"), "up", "--controller", $"{edges[0].Url},{edges[1].Url}",
                "--controller-fingerprint", core.Fingerprint, "--socks", "off", "--device-name", "d0", "--forward", $"0=127.0.0.1:{echo.Port}"],
                new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = account.GetProperty("key").GetString() });
            processes.Add(client);
            var line = await client.WaitForLineAsync(l => l.Contains("] forward ", StringComparison.Ordinal) && l.Contains(" listening on ", StringComparison.Ordinal), TimeSpan.FromSeconds(60), "the forward");
            var forward = System.Net.IPEndPoint.Parse(line[(line.LastIndexOf(' ') + 1)..]);
            var ours = new ClusterClient(client, Path.Combine(dir, "client")) { Forwards = [forward] };
            await ours.EchoAsync(Ct);
            Assert.Equal(edges[0].Url, (await ours.StatusAsync()).GetProperty("controller").GetString()?.TrimEnd('/'));
            // The controller sees the daemon's own address through the edge, not the edge's.
            Assert.Equal("127.0.0.1", online.PublicIp);

            // Edge 1 dies: the client and the relay move to edge 2.
            edges[0].Process.Kill();
            core.Url = edges[1].Url;
            await WaitForAsync(async () => (await ours.StatusAsync()) is var s && s.GetProperty("connected").GetBoolean()
                && s.GetProperty("controller").GetString()?.TrimEnd('/') == edges[1].Url, TimeSpan.FromSeconds(30), "the client on edge 2", core, edges);
            await RetryAsync(() => ours.EchoAsync(Ct), TimeSpan.FromSeconds(20));

            // Edge 1 comes back on the same addresses; the core links to it again by itself. Then edge 2 dies: everyone moves to edge 1.
            edges[0] = await Edge.StartAsync("edge1", secret, edges[0]);
            await WaitForAsync(() => Task.FromResult(core.Process.Output.Split('\n').Count(l => l.Contains($"Linked to edge {edges[0].Links}", StringComparison.Ordinal)) >= 2),
                TimeSpan.FromSeconds(20), "the core linked to the restarted edge 1", core, edges);
            var before = (await core.ConnectorAsync("c1")).OnlineSince;
            edges[1].Process.Kill();
            core.Url = edges[0].Url;
            await core.WaitForConnectorAsync("c1", v => v.State == "online" && v.OnlineSince != before, TimeSpan.FromSeconds(30), "online again through edge 1");
            await WaitForAsync(async () => (await ours.StatusAsync()) is var s && s.GetProperty("connected").GetBoolean()
                && s.GetProperty("controller").GetString()?.TrimEnd('/') == edges[0].Url, TimeSpan.FromSeconds(30), "the client back on edge 1", core, edges);
            await RetryAsync(() => ours.EchoAsync(Ct), TimeSpan.FromSeconds(20));

            // The core restarts: the edges keep their addresses, the daemons their configuration, and all comes back.
            before = (await core.ConnectorAsync("c1")).OnlineSince;
            await core.RestartAsync(crash: true);
            core.Url = edges[0].Url;
            Assert.Empty(ListeningSockets(core.Process.Id));
            await core.WaitForConnectorAsync("c1", v => v.State == "online" && v.OnlineSince != before, TimeSpan.FromSeconds(40), "online again after the core restarted");
            await RetryAsync(() => ours.EchoAsync(Ct), TimeSpan.FromSeconds(20));
        }
        finally
        {
            foreach (var process in processes)
            {
                await process.DisposeAsync();
            }
            if (core is not null)
            {
                await core.DisposeAsync();
            }
            foreach (var edge in edges)
            {
                await edge.Process.DisposeAsync();
            }
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task An_edge_refuses_a_core_with_another_secret_and_the_core_says_why()
    {
        var dir = Directory.CreateTempSubdirectory("ferry-edges-").FullName;
        try
        {
            var right = Path.Combine(dir, "right.secret");
            var wrong = Path.Combine(dir, "wrong.secret");
            await File.WriteAllTextAsync(right, new string('r', 40), Ct);
            await File.WriteAllTextAsync(wrong, new string('w', 40), Ct);
            var edge = await Edge.StartAsync("edge", right, null, "--metrics-listen", "127.0.0.1:0");
            await using var edgeProcess = edge.Process;
            const string marker = "Health and metrics on ";
            var metricsLine = await edge.Process.WaitForLineAsync(l => l.Contains(marker, StringComparison.Ordinal), TimeSpan.FromSeconds(10), "the edge's metrics listener");
            var readyz = new Uri(new Uri(metricsLine.Split(marker)[1].Split(' ')[0]), "/readyz");
            await using var core = FerryProcess.Start("core", ["controller", "--role", "core", "--data", Path.Combine(dir, "core"), "--edge", edge.Links,
                "--edge-secret-file", wrong, "--public-url", edge.Url]);
            await core.WaitForLineAsync(l => l.Contains("core and edge have different --edge-secret-file contents", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "the refusal");
            await edge.Process.WaitForLineAsync(l => l.Contains("Refused a core link from", StringComparison.Ordinal) && l.Contains("it does not know the edge secret", StringComparison.Ordinal),
                TimeSpan.FromSeconds(10), "the edge's refusal");
            // Without a link from its core, an edge says it cannot serve.
            using (var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) })
            {
                var answer = await http.GetAsync(readyz, Ct);
                Assert.Equal(System.Net.HttpStatusCode.ServiceUnavailable, answer.StatusCode);
                Assert.Contains("no link from the core", await answer.Content.ReadAsStringAsync(Ct), StringComparison.Ordinal);
            }

            // Nobody gets through an edge without its core: the connection is closed, not left hanging.
            using var tcp = new System.Net.Sockets.TcpClient();
            await tcp.ConnectAsync(System.Net.IPEndPoint.Parse(new Uri(edge.Url).Authority), Ct);
            Assert.Equal(0, await tcp.GetStream().ReadAsync(new byte[1], Ct).AsTask().WaitAsync(TimeSpan.FromSeconds(20), Ct));

            var bad = await FerryCli.RunAsync(["controller", "--role", "core", "--data", Path.Combine(dir, "core2"), "--listen", "127.0.0.1:0", "--edge", edge.Links, "--edge-secret-file", right, "--public-url", edge.Url]);
            Assert.Equal(2, bad.ExitCode);
            Assert.Contains("--role core listens on nothing", bad.Stderr, StringComparison.Ordinal);
            var shortSecret = Path.Combine(dir, "short.secret");
            await File.WriteAllTextAsync(shortSecret, "tooshort", Ct);
            var weak = await FerryCli.RunAsync(["controller", "--role", "edge", "--listen", "127.0.0.1:0", "--link-listen", "127.0.0.1:0", "--edge-secret-file", shortSecret]);
            Assert.NotEqual(0, weak.ExitCode);
            Assert.Contains("it needs at least 32 random ones", weak.Stderr, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>An edge process, its public URL and its link address.</summary>
    private sealed record Edge(FerryProcess Process, string Url, string Links)
    {
        /// <summary>Starts an edge on free ports, or on the ports of <paramref name="previous"/> (a restart).</summary>
        public static async Task<Edge> StartAsync(string name, string secret, Edge? previous = null, params string[] extra)
        {
            var listen = previous is null ? "127.0.0.1:0" : new Uri(previous.Url).Authority;
            var links = previous?.Links ?? "127.0.0.1:0";
            var process = FerryProcess.Start(name, ["controller", "--role", "edge", "--listen", listen, "--link-listen", links, "--edge-secret-file", secret, .. extra]);
            var publicLine = await process.WaitForLineAsync(l => l.Contains("daemons and operators:", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "the edge's public address");
            var linkLine = await process.WaitForLineAsync(l => l.Contains("core links:", StringComparison.Ordinal), TimeSpan.FromSeconds(5), "the edge's link address");
            return new Edge(process, "https://" + publicLine.Split("daemons and operators:")[1].Trim(), linkLine.Split("core links:")[1].Trim());
        }
    }

    /// <summary>
    /// The network sockets process <paramref name="pid"/> could be reached on: TCP in LISTEN state, and any bound UDP socket.
    /// (Unix sockets are not ports; the runtime's own diagnostics socket is one.)
    /// </summary>
    private static List<string> ListeningSockets(int pid)
    {
        var inodes = new HashSet<string>(StringComparer.Ordinal);
        foreach (var fd in Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget is { } target && target.StartsWith("socket:[", StringComparison.Ordinal))
                {
                    inodes.Add(target["socket:[".Length..^1]);
                }
            }
            catch (IOException)
            {
                // The descriptor closed while we looked.
            }
        }
        Assert.NotEmpty(inodes);
        var listening = new List<string>();
        foreach (var table in new[] { "tcp", "tcp6", "udp", "udp6" })
        {
            foreach (var row in File.ReadLines($"/proc/{pid}/net/{table}").Skip(1).Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)))
            {
                // Columns: sl local rem st queues timer retransmits uid timeout inode. 0A is LISTEN; for UDP any socket is open to packets.
                if (inodes.Contains(row[9]) && (table.StartsWith("udp", StringComparison.Ordinal) || row[3] == "0A"))
                {
                    listening.Add($"{table} {row[1]}");
                }
            }
        }
        return listening;
    }

    private static async Task WaitForAsync(Func<Task<bool>> condition, TimeSpan timeout, string what, ControllerInstance core, Edge[] edges)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out after {timeout.TotalSeconds} s waiting for {what}\ncore:\n{core.Process.Output}\n"
                + string.Join("\n", edges.Select(e => $"{e.Process.Name}:\n{e.Process.Output}")));
            await Task.Delay(200, Ct);
        }
    }

    private static async Task RetryAsync(Func<Task> flow, TimeSpan within)
    {
        var deadline = DateTime.UtcNow + within;
        while (true)
        {
            try
            {
                await flow();
                return;
            }
            catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or TimeoutException && DateTime.UtcNow < deadline)
            {
                await Task.Delay(100, Ct);
            }
        }
    }
}

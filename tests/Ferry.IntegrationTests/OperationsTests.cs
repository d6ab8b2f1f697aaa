using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Ferry.Core.Api;
using Ferry.Core.Tokens;
using Ferry.IntegrationTests.Infrastructure;
using Npgsql;

namespace Ferry.IntegrationTests;

/// <summary>Health endpoints, Prometheus metrics, 'ferry status' and security events, scraped and asked from real processes.</summary>
public sealed class OperationsTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    [Theory]
    [InlineData(StoreKind.Sqlite)]
    [InlineData(StoreKind.Postgres)]
    public async Task A_reused_token_copy_moves_the_refusal_counter_and_is_a_security_event_in_the_api_and_cli(StoreKind store)
    {
        await using var controller = await ControllerInstance.StartAsync(store, "--metrics-listen", "127.0.0.1:0");
        var metrics = await MetricsUrlAsync(controller.Process);
        var dir = Directory.CreateTempSubdirectory("ferry-ops-").FullName;
        await controller.AdminAsync("network", "create", "corp");
        var tokensPath = await controller.ProvisionAsync("corp", "c1", dir);
        var copyPath = Path.Combine(dir, "copy.tokens.json");
        File.Copy(tokensPath, copyPath);
        var stale = TokenFile.Read(copyPath);

        await using (var first = controller.StartConnector(tokensPath))
        {
            var online = await controller.WaitForConnectorAsync("c1", v => v.State == "online", Bound, "online");
            await WaitForMetricAsync(metrics, "ferry_controller_sessions", v => v == 1, ("kind", "connector"));
            var reusedBefore = await ScrapeAsync(metrics, "ferry_controller_refusals_total", ("reason", "token-reused"), ("stage", "refresh"));

            // The copy's refresh token was rotated away when the first process started: presenting it is reuse.
            await using var copy = controller.StartConnector(copyPath);
            Assert.NotEqual(0, await copy.WaitForExitAsync(Bound));

            Assert.Equal(reusedBefore + 1, await ScrapeAsync(metrics, "ferry_controller_refusals_total", ("reason", "token-reused"), ("stage", "refresh")));
            Assert.Equal(1, await ScrapeAsync(metrics, "ferry_controller_security_events_total", ("kind", "token-reuse")));

            using var http = controller.Http();
            var events = await http.GetFromJsonAsync<SecurityEventView[]>("/api/v1/security-events?kind=token-reuse", ControllerInstance.Json, Ct);
            var reuse = Assert.Single(events!);
            Assert.Equal(online.Id, reuse.Subject);
            Assert.Equal("127.0.0.1", reuse.Source);
            Assert.Contains("already used", reuse.Message, StringComparison.Ordinal);
            Assert.DoesNotContain(stale.RefreshToken, reuse.Message, StringComparison.Ordinal);

            var cli = await controller.AdminRawAsync("security-events", "--kind", "token-reuse", "--since", "1h", "--json");
            Assert.True(cli.ExitCode == 0, cli.ToString());
            Assert.Equal(online.Id, Assert.Single(JsonSerializer.Deserialize<SecurityEventView[]>(cli.Stdout, ControllerInstance.Json)!).Subject);
            var table = await controller.AdminRawAsync("security-events");
            Assert.Contains("token-reuse", table.Stdout, StringComparison.Ordinal);
            var badSince = await controller.AdminRawAsync("security-events", "--since", "yesterday-ish");
            Assert.Equal("error: since 'yesterday-ish' is not a time: give ISO 8601, for example 2026-01-31T12:00:00Z", badSince.Stderr.Trim());

            // A copy of the current tokens while the first process holds the session: refused as in use, and kept trying.
            var currentCopy = Path.Combine(dir, "current.tokens.json");
            File.Copy(tokensPath, currentCopy);
            await using (var copy2 = controller.StartConnector(currentCopy))
            {
                await WaitForMetricAsync(metrics, "ferry_controller_refusals_total", v => v >= 1, ("reason", "in-use"), ("stage", "refresh"));
            }
            var inUse = (await http.GetFromJsonAsync<SecurityEventView[]>("/api/v1/security-events?kind=token-in-use", ControllerInstance.Json, Ct))!;
            Assert.NotEmpty(inUse);
            Assert.All(inUse, e => Assert.Equal(online.Id, e.Subject));
        }

        // A connector whose clock is 30 s off is refused at the session, and that is a security event about it.
        var skewedTokens = await controller.ProvisionAsync("corp", "c2", dir);
        var skewedId = TokenFile.Read(skewedTokens).Id;
        await using (var skewed = controller.StartConnector(skewedTokens, "--test-clock-skew", "30"))
        {
            await WaitForMetricAsync(metrics, "ferry_controller_refusals_total", v => v >= 1, ("reason", "clock-skew"), ("stage", "session"));
        }
        using (var http = controller.Http())
        {
            var clock = (await http.GetFromJsonAsync<SecurityEventView[]>("/api/v1/security-events?kind=clock-refused", ControllerInstance.Json, Ct))!;
            Assert.Contains(clock, e => e.Subject == skewedId && e.Message.Contains("beyond the ±5000 ms tolerance", StringComparison.Ordinal));
        }
        await WaitForMetricAsync(metrics, "ferry_controller_sessions", v => v == 0, ("kind", "connector"));

        // A wrong admin API key and a wrong client password are recorded, but never the key or password presented.
        using (var wrongKey = controller.Http(withApiKey: false))
        {
            wrongKey.DefaultRequestHeaders.Authorization = new("Bearer", "ferry_ak_not-the-key-0123456789");
            Assert.Equal(HttpStatusCode.Unauthorized, (await wrongKey.GetAsync("/api/v1/networks", Ct)).StatusCode);
            var login = await wrongKey.PostAsJsonAsync("/v1/client/login", new ClientLoginRequest("mallory", "hunter2-guess", null, "laptop", null), Ct);
            Assert.Equal(HttpStatusCode.Unauthorized, login.StatusCode);
        }
        using var admin = controller.Http();
        var all = (await admin.GetFromJsonAsync<SecurityEventView[]>("/api/v1/security-events", ControllerInstance.Json, Ct))!;
        var keyEvent = Assert.Single(all, e => e.Kind == "api-key-refused");
        Assert.Equal("admin-api", keyEvent.Subject);
        Assert.Contains("GET /api/v1/networks", keyEvent.Message, StringComparison.Ordinal);
        var loginEvent = Assert.Single(all, e => e.Kind == "client-login-failed");
        Assert.Equal("mallory", loginEvent.Subject);
        foreach (var e in all)
        {
            Assert.DoesNotContain("not-the-key", e.Message, StringComparison.Ordinal);
            Assert.DoesNotContain("hunter2", e.Message, StringComparison.Ordinal);
        }
        Assert.Equal(new[] { "api-key-refused", "client-login-failed", "clock-refused", "token-in-use", "token-reuse" }, all.Select(e => e.Kind).Order(StringComparer.Ordinal).Distinct());
        var tooMany = await admin.GetAsync("/api/v1/security-events?limit=5000", Ct);
        Assert.Equal(HttpStatusCode.BadRequest, tooMany.StatusCode);
    }

    [Fact]
    public async Task Readyz_answers_503_with_the_reason_while_the_postgresql_database_refuses_connections_and_200_again_after()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Postgres, "--metrics-listen", "127.0.0.1:0");
        var metrics = await MetricsUrlAsync(controller.Process);
        using var http = controller.Http(withApiKey: false);
        using var plain = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/readyz", Ct)).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await plain.GetAsync(new Uri(metrics, "/readyz"), Ct)).StatusCode);

        var name = new NpgsqlConnectionStringBuilder(controller.DatabaseConnectionString).Database!;
        await using var pg = new NpgsqlConnection(TestDatabase.PostgresAdmin);
        await pg.OpenAsync(Ct);
        try
        {
            await ExecuteAsync(pg, $"ALTER DATABASE {name} ALLOW_CONNECTIONS false");
            await ExecuteAsync(pg, $"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()");

            var body = await WaitForStatusAsync(http, "/readyz", HttpStatusCode.ServiceUnavailable);
            var problem = JsonDocument.Parse(body).RootElement;
            Assert.Equal("not ready", problem.GetProperty("status").GetString());
            Assert.Contains("database (postgres)", problem.GetProperty("reason").GetString(), StringComparison.Ordinal);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, (await plain.GetAsync(new Uri(metrics, "/readyz"), Ct)).StatusCode);
            // Alive all the same: a liveness probe must not restart a controller whose database is away.
            Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/healthz", Ct)).StatusCode);
        }
        finally
        {
            await ExecuteAsync(pg, $"ALTER DATABASE {name} ALLOW_CONNECTIONS true");
        }
        await WaitForStatusAsync(http, "/readyz", HttpStatusCode.OK);
    }

    [Fact]
    public async Task A_flow_moves_client_and_connector_metrics_and_ferry_status_lists_both_daemons()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await using var echo = new EchoServer(IPAddress.Loopback);
        var port = echo.Port.ToString(CultureInfo.InvariantCulture);
        var states = Directory.CreateTempSubdirectory("ferry-states-").FullName;
        var connectorState = Path.Combine(states, "connector");
        var clientState = Path.Combine(states, "client");
        var relayState = Path.Combine(states, "relay");
        var noRelay = Path.Combine(states, "no-relay");
        await using var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", port, Ct,
            connectorArgs: ["--state", connectorState, "--metrics-listen", "127.0.0.1:0"], relayArgs: ["--state", relayState, "--metrics-listen", "127.0.0.1:0"]);
        var connectorMetrics = await MetricsUrlAsync(deployment.Connector);
        var relayMetrics = await MetricsUrlAsync(deployment.Relay);
        await using var client = FerryProcess.Start("client",
            ["client", "--state", clientState, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, "--socks", "off", "--metrics-listen", "127.0.0.1:0"],
            new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = deployment.ServiceAccountKey });
        var clientMetrics = await MetricsUrlAsync(client);
        using var plain = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        await WaitForStatusAsync(plain, new Uri(clientMetrics, "/readyz").ToString(), HttpStatusCode.OK);
        Assert.Equal(HttpStatusCode.OK, (await plain.GetAsync(new Uri(connectorMetrics, "/readyz"), Ct)).StatusCode);

        var added = await FerryCli.RunAsync(["client", "--state", clientState, "forward", "0", $"127.0.0.1:{port}"]);
        Assert.True(added.ExitCode == 0, added.ToString());
        var listening = IPEndPoint.Parse(added.Stdout.Split(' ')[1]);
        var payload = Encoding.ASCII.GetBytes(new string('x', 10_000));
        using (var tcp = new TcpClient())
        {
            await tcp.ConnectAsync(listening, Ct);
            var stream = tcp.GetStream();
            await stream.WriteAsync(payload, Ct);
            tcp.Client.Shutdown(SocketShutdown.Send);
            using var back = new MemoryStream();
            await stream.CopyToAsync(back, Ct).WaitAsync(Bound, Ct);
            Assert.Equal(payload.Length, back.Length);
        }

        // Bytes are counted when a flow ends, so wait for both ends to close it.
        await WaitForMetricAsync(clientMetrics, "ferry_client_bytes_total", v => v == payload.Length, ("direction", "received"));
        Assert.Equal(payload.Length, await ScrapeAsync(clientMetrics, "ferry_client_bytes_total", ("direction", "sent")));
        Assert.Equal(1, await ScrapeAsync(clientMetrics, "ferry_client_flows_total", ("protocol", "tcp"), ("outcome", "opened")));
        Assert.Equal(0, await ScrapeAsync(clientMetrics, "ferry_client_flows_total", ("outcome", "failed")));
        Assert.Equal(1, await ScrapeAsync(clientMetrics, "ferry_client_quic_handshakes_total", ("outcome", "ok")));
        Assert.Equal(1, await ScrapeAsync(clientMetrics, "ferry_client_quic_handshake_duration_seconds_count", ("outcome", "ok")));
        Assert.Equal(1, await ScrapeAsync(clientMetrics, "ferry_client_connections"));
        Assert.Equal(0, await ScrapeAsync(clientMetrics, "ferry_client_failovers_total"));
        await WaitForMetricAsync(connectorMetrics, "ferry_connector_bytes_total", v => v == payload.Length, ("direction", "to_client"));
        Assert.Equal(payload.Length, await ScrapeAsync(connectorMetrics, "ferry_connector_bytes_total", ("direction", "to_resource")));
        Assert.Equal(1, await ScrapeAsync(connectorMetrics, "ferry_connector_flows_total", ("protocol", "tcp"), ("outcome", "ok")));
        await WaitForMetricAsync(connectorMetrics, "ferry_connector_flows_active", v => v == 0);
        // Client and connector each bind the pair's ticket on the relay, and each holds a link to it.
        Assert.True(await ScrapeAsync(relayMetrics, "ferry_relay_tickets_bound_total") >= 2);
        Assert.Equal(2, await ScrapeAsync(relayMetrics, "ferry_relay_links_active"));
        Assert.True(await ScrapeAsync(relayMetrics, "ferry_relay_bytes_total", ("direction", "in")) > 2 * payload.Length);
        Assert.Equal(HttpStatusCode.OK, (await plain.GetAsync(new Uri(relayMetrics, "/readyz"), Ct)).StatusCode);

        // 'ferry status' over the default folders (set through the environment here) shows both and says the relay is missing.
        var env = new Dictionary<string, string?> { ["FERRY_CLIENT_STATE"] = clientState, ["FERRY_CONNECTOR_STATE"] = connectorState, ["FERRY_RELAY_STATE"] = noRelay };
        var status = await FerryCli.RunAsync(["status"], env);
        Assert.True(status.ExitCode == 0, status.ToString());
        var lines = status.Stdout.Split('\n');
        Assert.StartsWith("KIND", lines[0], StringComparison.Ordinal);
        var connectorLine = Assert.Single(lines, l => l.StartsWith("connector ", StringComparison.Ordinal));
        Assert.Contains("connector/cn_", connectorLine, StringComparison.Ordinal);
        Assert.Contains(" c1 ", connectorLine, StringComparison.Ordinal);
        Assert.Contains("connected since", connectorLine, StringComparison.Ordinal);
        Assert.Contains(controller.Url, connectorLine, StringComparison.Ordinal);
        var clientLine = Assert.Single(lines, l => l.StartsWith("client ", StringComparison.Ordinal));
        Assert.Contains("device/dv_", clientLine, StringComparison.Ordinal);
        Assert.Contains("connected since", clientLine, StringComparison.Ordinal);
        Assert.Contains($"no relay running with state folder {noRelay}: start it with 'ferry relay --tokens FILE --state {noRelay}'", status.Stdout, StringComparison.Ordinal);

        var json = await FerryCli.RunAsync(["status", "--state", connectorState, "--json"]);
        Assert.True(json.ExitCode == 0, json.ToString());
        var entry = Assert.Single(JsonDocument.Parse(json.Stdout).RootElement.EnumerateArray());
        Assert.Equal("connector", entry.GetProperty("kind").GetString());
        var connectorStatus = entry.GetProperty("status");
        Assert.Equal("c1", connectorStatus.GetProperty("name").GetString());
        Assert.True(connectorStatus.GetProperty("connected").GetBoolean());
        Assert.Equal(0, connectorStatus.GetProperty("flows").GetInt32());
        Assert.StartsWith("relay/rl_", connectorStatus.GetProperty("relayLinks").EnumerateArray().Select(r => r.GetString()).Single(), StringComparison.Ordinal);

        var relayJson = await FerryCli.RunAsync(["status", "--state", relayState, "--json"]);
        var relayStatus = Assert.Single(JsonDocument.Parse(relayJson.Stdout).RootElement.EnumerateArray()).GetProperty("status");
        Assert.Equal("r1", relayStatus.GetProperty("name").GetString());
        Assert.Equal(2, relayStatus.GetProperty("flows").GetInt32());
        Assert.Contains(relayStatus.GetProperty("listeners").EnumerateArray(), l => l.GetString()!.StartsWith("relay 127.0.0.1:", StringComparison.Ordinal));
        Assert.True(relayStatus.GetProperty("counters").GetProperty("tickets_bound").GetInt64() >= 2);

        var nothing = await FerryCli.RunAsync(["status", "--state", noRelay]);
        Assert.Equal(3, nothing.ExitCode);
        Assert.Equal($"error: no client, connector or relay is running with state folder '{noRelay}' (nothing answers on client.sock, connector.sock or relay.sock there): start one with --state {noRelay}, e.g. 'ferry connector --tokens FILE --state {noRelay}'", nothing.Stderr.Trim());

        // A second connector on the same state folder would hide the first from 'ferry status': it is refused with the reason.
        var second = await FerryCli.RunAsync(["connector", "--tokens", Path.Combine(deployment.Directory, "c1.tokens.json"), "--state", connectorState]);
        Assert.Equal($"error: another connector is running with state folder '{connectorState}'; stop it or give this one its own --state", second.Stderr.Trim());
    }

    /// <summary>The base URL of a daemon's --metrics-listen server, from the line it logs when listening.</summary>
    private static async Task<Uri> MetricsUrlAsync(FerryProcess process)
    {
        const string marker = "Health and metrics on ";
        var line = await process.WaitForLineAsync(l => l.Contains(marker, StringComparison.Ordinal), Bound, "metrics listener");
        return new Uri(line.Split(marker)[1].Split(' ')[0]);
    }

    /// <summary>The sum of the samples of <paramref name="name"/> whose labels include <paramref name="labels"/>; 0 when there are none.</summary>
    private static async Task<double> ScrapeAsync(Uri metrics, string name, params (string Key, string Value)[] labels)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        var text = await http.GetStringAsync(new Uri(metrics, "/metrics"), Ct);
        var sum = 0.0;
        foreach (var line in text.Split('\n'))
        {
            if (line.StartsWith('#') || !(line.StartsWith(name + "{", StringComparison.Ordinal) || line.StartsWith(name + " ", StringComparison.Ordinal)))
            {
                continue;
            }
            var close = line.IndexOf('}', StringComparison.Ordinal);
            var labelText = close < 0 ? "" : line[(name.Length + 1)..close];
            if (labels.All(l => labelText.Contains($"{l.Key}=\"{l.Value}\"", StringComparison.Ordinal)))
            {
                sum += double.Parse(line[((close < 0 ? name.Length : close + 1))..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
            }
        }
        return sum;
    }

    private static async Task WaitForMetricAsync(Uri metrics, string name, Func<double, bool> condition, params (string Key, string Value)[] labels)
    {
        var deadline = DateTime.UtcNow + Bound;
        double last;
        while (!condition(last = await ScrapeAsync(metrics, name, labels)))
        {
            if (DateTime.UtcNow > deadline)
            {
                Assert.Fail($"{name}{{{string.Join(',', labels.Select(l => $"{l.Key}={l.Value}"))}}} is {last} after {Bound.TotalSeconds} s");
            }
            await Task.Delay(100, Ct);
        }
    }

    /// <summary>Polls <paramref name="path"/> until it answers <paramref name="expected"/> (bounded); returns the body.</summary>
    private static async Task<string> WaitForStatusAsync(HttpClient http, string path, HttpStatusCode expected)
    {
        var deadline = DateTime.UtcNow + Bound;
        while (true)
        {
            using var response = await http.GetAsync(path, Ct);
            var body = await response.Content.ReadAsStringAsync(Ct);
            if (response.StatusCode == expected)
            {
                return body;
            }
            if (DateTime.UtcNow > deadline)
            {
                Assert.Fail($"{path} still answers {(int)response.StatusCode} {body} after {Bound.TotalSeconds} s, not {(int)expected}");
            }
            await Task.Delay(200, Ct);
        }
    }

    private static async Task ExecuteAsync(NpgsqlConnection connection, string sql)
    {
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync(Ct);
    }
}

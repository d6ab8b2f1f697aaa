using System.Text.Json;
using Ferry.Core.ControlPlane;
using Ferry.Core.Tokens;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>Issue 2: a real controller and real connector processes — coming online with every detail, going offline, single-owner tokens, the clock rule, restarts.</summary>
public sealed class ConnectorLifecycleTests
{
    private static readonly TimeSpan Online = TimeSpan.FromSeconds(30);

    [Theory]
    [InlineData(StoreKind.Sqlite)]
    [InlineData(StoreKind.Postgres)]
    public async Task Connector_comes_online_with_every_detail_and_rotated_tokens(StoreKind store)
    {
        await using var controller = await ControllerInstance.StartAsync(store);
        var dir = Directory.CreateTempSubdirectory("ferry-test-").FullName;
        await controller.AdminAsync("network", "create", "corp");
        var tokensPath = await controller.ProvisionAsync("corp", "c1", dir);
        var provisioned = TokenFile.Read(tokensPath);

        await using var connector = controller.StartConnector(tokensPath);
        var view = await controller.WaitForConnectorAsync("c1", v => v.State == "online", Online, "online");

        Assert.Equal(Environment.MachineName, view.Hostname);
        Assert.Equal("127.0.0.1", view.PublicIp);
        Assert.Equal(HostFacts.PrivateIps().Order(), view.PrivateIps.Order());
        Assert.Equal(HostFacts.Version, view.Version);
        Assert.NotNull(view.TimeOffsetMs);
        Assert.InRange(view.TimeOffsetMs!.Value, -1000, 1000);
        Assert.Equal("ok", view.TimeOffsetStatus);
        Assert.Equal("not-run", view.Stun.Status);
        Assert.NotNull(view.OnlineSince);
        Assert.NotNull(view.LastSeen);
        Assert.Null(view.OfflineSince);
        Assert.Equal("corp", view.Network);

        // The pair was rotated at start and saved atomically, readable by the owner only.
        var saved = TokenFile.Read(tokensPath);
        Assert.NotEqual(provisioned.RefreshToken, saved.RefreshToken);
        Assert.NotEqual(provisioned.AccessToken, saved.AccessToken);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(tokensPath));

        // Heartbeats keep it fresh: last-seen moves forward while it stays online.
        var later = await controller.WaitForConnectorAsync("c1", v => v.LastSeen > view.LastSeen, TimeSpan.FromSeconds(10), "seen again");
        Assert.Equal("online", later.State);
    }

    [Theory]
    [InlineData(StoreKind.Sqlite)]
    [InlineData(StoreKind.Postgres)]
    public async Task Killed_connector_shows_offline_within_three_heartbeats_and_comes_back_with_rotated_tokens(StoreKind store)
    {
        await using var controller = await ControllerInstance.StartAsync(store);
        var dir = Directory.CreateTempSubdirectory("ferry-test-").FullName;
        await controller.AdminAsync("network", "create", "corp");
        var tokensPath = await controller.ProvisionAsync("corp", "c1", dir);

        var first = controller.StartConnector(tokensPath);
        await controller.WaitForConnectorAsync("c1", v => v.State == "online", Online, "online");
        var rotated = TokenFile.Read(tokensPath);
        first.Kill();
        await first.DisposeAsync();

        var offline = await controller.WaitForConnectorAsync("c1", v => v.State == "offline", ControllerInstance.HeartbeatInterval * 3 + TimeSpan.FromSeconds(2), "offline");
        Assert.NotNull(offline.OfflineSince);
        Assert.NotNull(offline.DowntimeSeconds);
        Assert.Null(offline.OnlineSince);
        var downtime = await controller.WaitForConnectorAsync("c1", v => v.DowntimeSeconds >= 1, TimeSpan.FromSeconds(10), "down for a second");
        Assert.Equal("offline", downtime.State);

        // The restarted process uses the rotated pair it saved, not the provisioned one.
        await using var second = controller.StartConnector(tokensPath);
        var back = await controller.WaitForConnectorAsync("c1", v => v.State == "online", Online, "online again");
        Assert.NotEqual(rotated.RefreshToken, TokenFile.Read(tokensPath).RefreshToken);
        Assert.Equal(["online", "offline", "online"], back.History.Select(h => h.State).Reverse().ToArray());
    }

    [Fact]
    public async Task Frozen_connector_is_shown_offline_after_three_missed_heartbeats()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        var dir = Directory.CreateTempSubdirectory("ferry-test-").FullName;
        await controller.AdminAsync("network", "create", "corp");
        var tokensPath = await controller.ProvisionAsync("corp", "c1", dir);
        await using var connector = controller.StartConnector(tokensPath);
        await controller.WaitForConnectorAsync("c1", v => v.State == "online", Online, "online");

        // SIGSTOP keeps its TCP connection open: only the missing heartbeats can tell.
        connector.Send(UnixSignal.Stop);
        try
        {
            var offline = await controller.WaitForConnectorAsync("c1", v => v.State == "offline", ControllerInstance.HeartbeatInterval * 3 + TimeSpan.FromSeconds(3), "offline");
            Assert.NotNull(offline.OfflineSince);
            var history = await controller.WaitForConnectorAsync("c1", v => v.History.Any(h => h.State == "offline"), TimeSpan.FromSeconds(10), "offline in history");
            Assert.Contains(history.History, h => h.State == "offline" && h.Reason == "missed three heartbeats");
        }
        finally
        {
            connector.Send(UnixSignal.Continue);
        }
    }

    [Theory]
    [InlineData(StoreKind.Sqlite)]
    [InlineData(StoreKind.Postgres)]
    public async Task Second_process_with_copied_tokens_is_refused_and_the_first_keeps_working(StoreKind store)
    {
        await using var controller = await ControllerInstance.StartAsync(store);
        var dir = Directory.CreateTempSubdirectory("ferry-test-").FullName;
        await controller.AdminAsync("network", "create", "corp");
        var tokensPath = await controller.ProvisionAsync("corp", "c1", dir);
        var copyPath = Path.Combine(dir, "copy.tokens.json");
        File.Copy(tokensPath, copyPath);

        await using var first = controller.StartConnector(tokensPath);
        var online = await controller.WaitForConnectorAsync("c1", v => v.State == "online", Online, "online");

        await using var copy = controller.StartConnector(copyPath);
        var code = await copy.WaitForExitAsync(TimeSpan.FromSeconds(30));
        Assert.NotEqual(0, code);
        var error = copy.Stderr.Split('\n').Single(l => l.StartsWith("error:", StringComparison.Ordinal));
        Assert.Contains("'c1'", error, StringComparison.Ordinal);
        Assert.Contains($"in use by another process since {online.OnlineSince!.Value.UtcDateTime:yyyy-MM-dd HH:mm}", error, StringComparison.Ordinal);

        // A copy of the current (already rotated) file fares no better: the session is held.
        var currentCopy = Path.Combine(dir, "current.tokens.json");
        File.Copy(tokensPath, currentCopy);
        await using var copy2 = controller.StartConnector(currentCopy);
        await copy2.WaitForLineAsync(l => l.Contains("in use by another process", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "in-use refusal");

        var after = await controller.WaitForConnectorAsync("c1", v => v.LastSeen > online.LastSeen && v.Events.Length >= 3, TimeSpan.FromSeconds(10), "still heartbeating with refusals logged");
        Assert.Equal("online", after.State);
        Assert.Equal(online.OnlineSince, after.OnlineSince);
        Assert.Contains(after.Events, e => e.Kind == "token-reuse" && e.Message.Contains("already used", StringComparison.Ordinal));
        Assert.Contains(after.Events, e => e.Kind == "token-in-use");
        Assert.False(first.HasExited);
    }

    [Fact]
    public async Task Connector_with_clock_skewed_by_ten_seconds_is_refused_naming_the_offset()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        var dir = Directory.CreateTempSubdirectory("ferry-test-").FullName;
        await controller.AdminAsync("network", "create", "corp");
        var tokensPath = await controller.ProvisionAsync("corp", "skewed", dir);

        await using var connector = controller.StartConnector(tokensPath, "--test-clock-skew", "10");
        var line = await connector.WaitForLineAsync(l => l.Contains("clock-skew", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "clock refusal");
        var offset = int.Parse(System.Text.RegularExpressions.Regex.Match(line, @"off by \+(\d+) ms").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(offset, 9000, 11000);
        Assert.Contains("±5000 ms", line, StringComparison.Ordinal);

        var view = await controller.WaitForConnectorAsync("skewed", v => v.Events.Any(e => e.Kind == "clock-refused"), TimeSpan.FromSeconds(10), "clock refusal logged");
        Assert.Equal("offline", view.State);
        Assert.Empty(view.History);
    }

    [Fact]
    public async Task Connector_four_seconds_off_is_accepted_but_flagged()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        var dir = Directory.CreateTempSubdirectory("ferry-test-").FullName;
        await controller.AdminAsync("network", "create", "corp");
        var tokensPath = await controller.ProvisionAsync("corp", "drifting", dir);
        await using var connector = controller.StartConnector(tokensPath, "--test-clock-skew", "-4");
        var view = await controller.WaitForConnectorAsync("drifting", v => v.State == "online", Online, "online");
        Assert.InRange(view.TimeOffsetMs!.Value, -5000, -3000);
        Assert.Equal("warning", view.TimeOffsetStatus);
    }

    [Fact]
    public async Task Corrupt_or_missing_tokens_file_fails_with_one_readable_line()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        var dir = Directory.CreateTempSubdirectory("ferry-test-").FullName;
        var corrupt = Path.Combine(dir, "corrupt.json");
        await File.WriteAllTextAsync(corrupt, "{ \"kind\": \"connector\", \"id\": ", TestContext.Current.CancellationToken);
        var result = await FerryCli.RunAsync(["connector", "--tokens", corrupt, "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint]);
        Assert.NotEqual(0, result.ExitCode);
        Assert.StartsWith($"error: tokens file '{corrupt}' is not valid", result.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", result.Stderr, StringComparison.Ordinal);

        var missing = await FerryCli.RunAsync(["connector", "--tokens", Path.Combine(dir, "nope.json")]);
        Assert.NotEqual(0, missing.ExitCode);
        Assert.Contains("does not exist", missing.Stderr, StringComparison.Ordinal);

        // Well-formed but unknown to this controller (another deployment, or removed).
        var forged = new TokenFile { Kind = "connector", Id = "cn_forged", AccessToken = TokenFormat.New(TokenFormat.AccessPrefix), RefreshToken = TokenFormat.New(TokenFormat.RefreshPrefix), Controller = controller.Url, ControllerFingerprint = controller.Fingerprint };
        var forgedPath = Path.Combine(dir, "forged.json");
        forged.Save(forgedPath);
        var unknown = await FerryCli.RunAsync(["connector", "--tokens", forgedPath]);
        Assert.NotEqual(0, unknown.ExitCode);
        Assert.Contains("not known to this controller", unknown.Stderr, StringComparison.Ordinal);

        // A controller certificate that does not match the pinned fingerprint is never trusted.
        var wrongPin = await FerryCli.RunAsync(["admin", "network", "list", "--controller", controller.Url, "--api-key", controller.ApiKey, "--controller-fingerprint", "sha256:" + new string('0', 64)]);
        Assert.NotEqual(0, wrongPin.ExitCode);
        Assert.Contains("not trusted", wrongPin.Stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(StoreKind.Sqlite)]
    [InlineData(StoreKind.Postgres)]
    public async Task Restarting_the_controller_loses_nothing(StoreKind store)
    {
        await using var controller = await ControllerInstance.StartAsync(store);
        var dir = Directory.CreateTempSubdirectory("ferry-test-").FullName;
        await controller.AdminAsync("network", "create", "corp", "--dns-server", "10.0.0.53");
        await controller.AdminAsync("resource", "add", "db.corp.internal", "--network", "corp", "--name", "db", "--tcp", "5432");
        await controller.AdminAsync("resource", "add", "10.1.0.0/16", "--network", "corp", "--name", "lan", "--udp", "53");
        await controller.AdminAsync("group", "create", "eng");
        Environment.SetEnvironmentVariable("FERRY_PASSWORD", null);
        var userEnv = controller.AdminEnv();
        userEnv["FERRY_PASSWORD"] = "correct horse battery";
        Assert.Equal(0, (await FerryCli.RunAsync(["admin", "user", "create", "alice"], userEnv)).ExitCode);
        await controller.AdminAsync("group", "add-member", "eng", "alice");
        await controller.AdminAsync("service-account", "create", "ci");
        await controller.AdminAsync("policy", "grant", "db", "--group", "eng");
        await controller.AdminAsync("policy", "grant", "lan", "--service-account", "ci");
        var tokensPath = await controller.ProvisionAsync("corp", "c1", dir);
        await using (var connector = controller.StartConnector(tokensPath))
        {
            await controller.WaitForConnectorAsync("c1", v => v.State == "online", Online, "online");
        }

        var before = await SnapshotAsync(controller);
        await controller.RestartAsync(crash: true);
        var after = await SnapshotAsync(controller);
        Assert.Equal(before, after);

        // Token state survived too: the connector comes back with the pair it saved before the restart.
        await using var again = controller.StartConnector(tokensPath);
        var view = await controller.WaitForConnectorAsync("c1", v => v.State == "online", Online, "online after controller restart");
        Assert.Contains(view.History, h => h.State == "offline");
    }

    private static async Task<string> SnapshotAsync(ControllerInstance controller)
    {
        var parts = new List<string>();
        foreach (var what in new[] { "network", "resource", "group", "user", "service-account", "policy" })
        {
            var json = await controller.AdminAsync(what, "list", "--json");
            // Counts of connectors change with sessions, not with restarts; everything listed here must match exactly.
            parts.Add(JsonSerializer.Serialize(JsonDocument.Parse(json).RootElement));
        }
        var connectors = await controller.AdminJsonAsync<JsonElement[]>("connector", "list");
        parts.Add(string.Join(",", connectors.Select(c => c.GetProperty("id").GetString() + c.GetProperty("name").GetString() + c.GetProperty("hostname").GetString())));
        return string.Join("\n", parts);
    }
}

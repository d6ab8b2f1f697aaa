using System.Collections.Concurrent;
using System.Data.Common;
using System.Net.Http.Json;
using Dapper;
using Ferry.Core.Api;
using Microsoft.Data.Sqlite;
using Npgsql;

namespace Ferry.IntegrationTests.Infrastructure;

/// <summary>
/// Admin writes fired concurrently over a controller's API while a fault is injected: each chain creates a network (every
/// other one requiring MFA, which is a second row), a resource in it, a grant of that resource and a connector in it, and
/// remembers which steps were acknowledged (2xx), refused with a problem (5xx), or cut off with no answer.
/// </summary>
public sealed class AdminWriteLoad
{
    private readonly ConcurrentDictionary<string, string> _acknowledged = new(StringComparer.Ordinal);
    private readonly ConcurrentQueue<string> _violations = new();
    private int _chains;
    private int _refused;
    private int _cutOff;
    private int _inFlight;
    private int _cutThisRun;

    /// <summary>A service account the grants go to; created by <see cref="PrepareAsync"/>.</summary>
    public const string Grantee = "load";

    /// <summary>Writes answered 2xx, by kind ("network", "resource", "policy", "connector") and name; they must all survive.</summary>
    public IReadOnlyDictionary<string, string> Acknowledged => _acknowledged;

    /// <summary>Answers no well-behaved controller gives: a 4xx for a valid request, a 5xx without problem+json.</summary>
    public IReadOnlyCollection<string> Violations => _violations;

    public int Refused => _refused;
    public int CutOff => _cutOff;
    public int Chains => _chains;

    /// <summary>Writes sent and not answered yet.</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    public override string ToString() => $"{_chains} chains, {_acknowledged.Count} writes acknowledged, {_refused} refused with a problem, {_cutOff} cut off, {_violations.Count} other answers";

    public static async Task PrepareAsync(ControllerInstance controller)
    {
        using var http = controller.Http();
        var response = await http.PostAsJsonAsync("/api/v1/service-accounts", new ServiceAccountCreateRequest(Grantee), ControllerInstance.Json);
        Assert.True(response.IsSuccessStatusCode, $"service account: {(int)response.StatusCode}");
    }

    /// <summary>
    /// Runs <paramref name="writers"/> concurrent chains of writes until <paramref name="stop"/> is cancelled, a write is cut
    /// off (the controller is gone), or each ran <paramref name="maxChains"/>.
    /// </summary>
    public Task RunAsync(ControllerInstance controller, string prefix, int writers, int maxChains, CancellationToken stop)
    {
        Volatile.Write(ref _cutThisRun, 0);
        return Task.WhenAll(Enumerable.Range(0, writers).Select(w => Task.Run(() => WriterAsync(controller, prefix, w, maxChains, stop), CancellationToken.None)));
    }

    private async Task WriterAsync(ControllerInstance controller, string prefix, int writer, int maxChains, CancellationToken stop)
    {
        using var http = controller.Http();
        http.Timeout = TimeSpan.FromSeconds(20);
        for (var i = 0; i < maxChains && !stop.IsCancellationRequested && Volatile.Read(ref _cutThisRun) == 0; i++)
        {
            Interlocked.Increment(ref _chains);
            var mfa = i % 2 == 0;
            var network = $"{prefix}-w{writer}-{i}" + (mfa ? "-mfa" : "");
            if (!await WriteAsync(http, "network", network, "/api/v1/networks", new NetworkCreateRequest(network, RequireMfa: mfa, MfaIdleTimeoutSeconds: mfa ? 600 : null)))
            {
                continue;
            }
            var resource = $"{prefix}-r{writer}-{i}";
            if (await WriteAsync(http, "resource", resource, "/api/v1/resources", new ResourceCreateRequest(network, $"{resource}.corp.internal", resource, Tcp: "443")))
            {
                await WriteAsync(http, "policy", resource, "/api/v1/policies", new PolicyGrantRequest(resource, ServiceAccount: Grantee));
            }
            await WriteAsync(http, "connector", $"{prefix}-c{writer}-{i}", "/api/v1/connectors", new ConnectorProvisionRequest(network, $"{prefix}-c{writer}-{i}"));
        }
    }

    private async Task<bool> WriteAsync<T>(HttpClient http, string kind, string name, string path, T body)
    {
        HttpResponseMessage response;
        Interlocked.Increment(ref _inFlight);
        try
        {
            // Not cancellable by the stop token: a write under way runs to its answer (or to the controller's death).
            response = await http.PostAsJsonAsync(path, body, ControllerInstance.Json);
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or IOException)
        {
            Interlocked.Increment(ref _cutOff);
            Volatile.Write(ref _cutThisRun, 1);
            return false;
        }
        finally
        {
            Interlocked.Decrement(ref _inFlight);
        }
        using (response)
        {
            if (response.IsSuccessStatusCode)
            {
                _acknowledged[$"{kind} {name}"] = kind;
                return true;
            }
            var text = await ReadBodyAsync(response);
            var type = response.Content.Headers.ContentType?.MediaType;
            if ((int)response.StatusCode >= 500 && type == "application/problem+json" && text.Contains("\"detail\"", StringComparison.Ordinal))
            {
                Interlocked.Increment(ref _refused);
            }
            else
            {
                _violations.Enqueue($"{kind} {name}: {(int)response.StatusCode} {type} {text}");
            }
            return false;
        }
    }

    private static async Task<string> ReadBodyAsync(HttpResponseMessage response)
    {
        try
        {
            return await response.Content.ReadAsStringAsync();
        }
        catch (Exception e) when (e is HttpRequestException or IOException)
        {
            return $"(body cut off: {e.Message})";
        }
    }

    /// <summary>
    /// Through the API: every acknowledged write is there, and every network whose name says it requires MFA does
    /// (whether or not its creation was acknowledged: half a creation must not be visible).
    /// </summary>
    public async Task AssertVisibleAsync(ControllerInstance controller, string context)
    {
        using var http = controller.Http();
        var networks = (await http.GetFromJsonAsync<NetworkView[]>("/api/v1/networks", ControllerInstance.Json))!.ToDictionary(n => n.Name, StringComparer.Ordinal);
        var resources = (await http.GetFromJsonAsync<ResourceView[]>("/api/v1/resources", ControllerInstance.Json))!.ToDictionary(r => r.Name, StringComparer.Ordinal);
        var policies = (await http.GetFromJsonAsync<PolicyView[]>("/api/v1/policies", ControllerInstance.Json))!;
        var connectors = (await http.GetFromJsonAsync<ConnectorView[]>("/api/v1/connectors", ControllerInstance.Json))!.ToDictionary(c => c.Name, StringComparer.Ordinal);
        var missing = new List<string>();
        foreach (var (key, kind) in _acknowledged)
        {
            var name = key[(kind.Length + 1)..];
            var present = kind switch
            {
                "network" => networks.ContainsKey(name),
                "resource" => resources.ContainsKey(name),
                "policy" => policies.Any(p => p.Resource == name && p.ServiceAccount == Grantee),
                "connector" => connectors.ContainsKey(name),
                _ => false,
            };
            if (!present)
            {
                missing.Add(key);
            }
        }
        Assert.True(missing.Count == 0, $"{context}: acknowledged writes lost: {string.Join(", ", missing)} ({this})");
        var halfCreated = networks.Values.Where(n => n.Name.EndsWith("-mfa", StringComparison.Ordinal) && !n.RequireMfa).Select(n => n.Name).ToArray();
        Assert.True(halfCreated.Length == 0, $"{context}: networks created without the MFA they were created with: {string.Join(", ", halfCreated)}");
        Assert.True(_violations.IsEmpty, $"{context}: answers that are neither success nor a problem: {string.Join("\n", _violations)}");
    }

    /// <summary>In the database itself: no row refers to one that is not there, and every connector has the tokens and event provisioning writes with it.</summary>
    public static async Task AssertConsistentAsync(DbConnection db, string context)
    {
        var orphans = new Dictionary<string, string>
        {
            ["resources without their network"] = "SELECT r.name FROM resources r LEFT JOIN networks n ON n.id = r.network_id WHERE n.id IS NULL",
            ["grants without their resource"] = "SELECT p.id FROM policies p LEFT JOIN resources r ON r.id = p.resource_id WHERE r.id IS NULL",
            ["grants without their service account"] = "SELECT p.id FROM policies p LEFT JOIN service_accounts s ON s.id = p.service_account_id WHERE p.service_account_id IS NOT NULL AND s.id IS NULL",
            ["connectors without their network"] = "SELECT d.name FROM daemons d LEFT JOIN networks n ON n.id = d.network_id WHERE d.kind = 'connector' AND n.id IS NULL",
            ["connectors without tokens"] = "SELECT d.name FROM daemons d WHERE NOT EXISTS (SELECT 1 FROM tokens t WHERE t.owner_id = d.id)",
            ["connectors without their provisioning event"] = "SELECT d.name FROM daemons d WHERE d.kind = 'connector' AND NOT EXISTS (SELECT 1 FROM events e WHERE e.subject_id = d.id AND e.kind = 'provisioned')",
            ["MFA settings without their network"] = "SELECT m.network_id FROM network_mfa m LEFT JOIN networks n ON n.id = m.network_id WHERE n.id IS NULL",
            ["networks created requiring MFA without it"] = "SELECT n.name FROM networks n LEFT JOIN network_mfa m ON m.network_id = n.id WHERE n.name LIKE '%-mfa' AND m.network_id IS NULL",
        };
        var found = new List<string>();
        foreach (var (what, sql) in orphans)
        {
            var rows = (await db.QueryAsync<string>(sql)).AsList();
            if (rows.Count > 0)
            {
                found.Add($"{what}: {string.Join(", ", rows)}");
            }
        }
        Assert.True(found.Count == 0, $"{context}: half-written changes in the store:\n{string.Join("\n", found)}");
    }

    /// <summary>Opens the stopped SQLite controller's database file to check it: integrity, WAL mode, and <see cref="AssertConsistentAsync"/>.</summary>
    public static async Task AssertSqliteFileAsync(string dataDirectory, string context)
    {
        var file = Path.Combine(dataDirectory, "ferry.db");
        await using var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = file, Mode = SqliteOpenMode.ReadWrite, Pooling = false }.ToString());
        await db.OpenAsync();
        Assert.Equal("wal", await db.QuerySingleAsync<string>("PRAGMA journal_mode"));
        var integrity = (await db.QueryAsync<string>("PRAGMA integrity_check")).AsList();
        Assert.True(integrity is ["ok"], $"{context}: integrity_check: {string.Join("; ", integrity)}");
        var foreignKeys = (await db.QueryAsync("PRAGMA foreign_key_check")).AsList();
        Assert.True(foreignKeys.Count == 0, $"{context}: foreign_key_check found {foreignKeys.Count} rows");
        await AssertConsistentAsync(db, context);
    }

    /// <summary><see cref="AssertConsistentAsync"/> on a PostgreSQL controller's database.</summary>
    public static async Task AssertPostgresAsync(string connectionString, string context)
    {
        await using var db = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(connectionString) { Pooling = false }.ConnectionString);
        await db.OpenAsync();
        await AssertConsistentAsync(db, context);
    }
}

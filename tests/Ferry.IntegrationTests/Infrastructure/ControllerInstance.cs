using System.Net.Http.Json;
using System.Text.Json;
using Ferry.Core.Api;
using Ferry.Core.Security;

namespace Ferry.IntegrationTests.Infrastructure;

/// <summary>A real 'ferry controller' process on a free loopback port, with a throw-away data folder and database.</summary>
public sealed class ControllerInstance : IAsyncDisposable
{
    public static readonly TimeSpan HeartbeatInterval = TimeSpan.FromSeconds(1);

    private readonly TestDatabase _database;
    private readonly bool _ownsDatabase;

    private ControllerInstance(TestDatabase database, string dataDirectory, bool ownsDatabase = true)
    {
        _database = database;
        DataDirectory = dataDirectory;
        _ownsDatabase = ownsDatabase;
    }

    public FerryProcess Process { get; private set; } = null!;
    public string DataDirectory { get; }
    /// <summary>Where admin requests go; for a core, one of its edges, which a test may switch while another is down.</summary>
    public string Url { get; set; } = "";

    // A core listens on nothing: it is started without --listen.
    private bool _core;
    public string Fingerprint { get; private set; } = "";
    public string ApiKey { get; private set; } = "";

    /// <summary>The PostgreSQL connection string the controller runs on; null for SQLite.</summary>
    public string? DatabaseConnectionString => _database.ConnectionString;

    private string[] _extra = [];

    /// <summary>The network namespace the controller (and every admin command) runs in; null for the test's own.</summary>
    public string? Netns { get; private init; }

    public static async Task<ControllerInstance> StartAsync(StoreKind kind, params string[] extraArgs)
    {
        var database = await TestDatabase.CreateAsync(kind);
        var instance = new ControllerInstance(database, Directory.CreateTempSubdirectory("ferry-ctl-").FullName) { _extra = extraArgs };
        await instance.StartProcessAsync("127.0.0.1:0");
        return instance;
    }

    /// <summary>
    /// Another replica on this controller's PostgreSQL database, with its own data folder and replica id; it shares the
    /// database (which the first instance disposes), and the admin key and TLS certificate the database holds.
    /// </summary>
    public async Task<ControllerInstance> StartReplicaAsync(string replicaId, params string[] extraArgs)
    {
        Assert.True(_database.ConnectionString is not null, "replicas share a PostgreSQL database");
        var replica = new ControllerInstance(_database, Directory.CreateTempSubdirectory("ferry-ctl-").FullName, ownsDatabase: false)
        {
            _extra = ["--replica-id", replicaId, .. extraArgs],
            ApiKey = ApiKey,
        };
        await replica.StartProcessAsync("127.0.0.1:0");
        return replica;
    }

    /// <summary>A core (SQLite) serving through edges: <paramref name="extraArgs"/> name them, the secret and the public URLs.</summary>
    public static async Task<ControllerInstance> StartCoreAsync(params string[] extraArgs)
    {
        var database = await TestDatabase.CreateAsync(StoreKind.Sqlite);
        var instance = new ControllerInstance(database, Directory.CreateTempSubdirectory("ferry-ctl-").FullName) { _extra = ["--role", "core", .. extraArgs], _core = true };
        await instance.StartProcessAsync("");
        return instance;
    }

    /// <summary>A SQLite controller inside a network namespace, listening on one of its addresses.</summary>
    public static async Task<ControllerInstance> StartInAsync(string netns, string address)
    {
        var database = await TestDatabase.CreateAsync(StoreKind.Sqlite);
        var instance = new ControllerInstance(database, Directory.CreateTempSubdirectory("ferry-ctl-").FullName) { Netns = netns };
        await instance.StartProcessAsync($"{address}:0");
        return instance;
    }

    private async Task StartProcessAsync(string listen)
    {
        var args = new List<string> { "controller", "--data", DataDirectory };
        if (!_core)
        {
            args.AddRange(["--listen", listen]);
        }
        if (!_extra.Contains("--heartbeat-interval"))
        {
            args.AddRange(["--heartbeat-interval", HeartbeatInterval.TotalSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        }
        args.AddRange(_extra);
        if (_database.ConnectionString is not null)
        {
            args.AddRange(["--database", _database.ConnectionString]);
        }
        Process = FerryProcess.Start("controller", args, netns: Netns);
        var urlLine = await Process.WaitForLineAsync(l => l.Contains("admin URL:", StringComparison.Ordinal), TimeSpan.FromSeconds(60), "admin URL");
        Url = urlLine.Split("admin URL:")[1].Trim().TrimEnd('/');
        var fingerprintLine = await Process.WaitForLineAsync(l => l.Contains("TLS fingerprint:", StringComparison.Ordinal), TimeSpan.FromSeconds(10), "TLS fingerprint");
        Fingerprint = fingerprintLine.Split("TLS fingerprint:")[1].Trim();
        // A replica joining a database another replica set up has no admin.key of its own: the key is the first one's.
        var keyFile = Path.Combine(DataDirectory, "admin.key");
        if (File.Exists(keyFile))
        {
            ApiKey = (await File.ReadAllTextAsync(keyFile)).Trim();
        }
    }

    /// <summary>Stops the process (SIGTERM, or SIGKILL when <paramref name="crash"/>) and starts it again on the same port, data and database.</summary>
    public async Task RestartAsync(bool crash = false)
    {
        await StopAsync(crash);
        await StartAgainAsync();
    }

    /// <summary>Stops the process (SIGTERM, or SIGKILL when <paramref name="crash"/>); <see cref="StartAgainAsync"/> brings it back.</summary>
    public async Task StopAsync(bool crash = false)
    {
        if (crash)
        {
            Process.Kill();
        }
        else
        {
            Process.Send(UnixSignal.Terminate);
        }
        await Process.WaitForExitAsync(TimeSpan.FromSeconds(30));
        await Process.DisposeAsync();
    }

    /// <summary>Starts the stopped controller on the same port, data and database.</summary>
    public Task StartAgainAsync() => StartProcessAsync(_core ? "" : $"127.0.0.1:{new Uri(Url).Port}");

    public Dictionary<string, string?> AdminEnv() => new()
    {
        ["FERRY_CONTROLLER"] = Url,
        ["FERRY_API_KEY"] = ApiKey,
        ["FERRY_CONTROLLER_FINGERPRINT"] = Fingerprint,
    };

    /// <summary>Runs 'ferry admin …' and requires success.</summary>
    public async Task<string> AdminAsync(params string[] args)
    {
        var result = await FerryCli.RunAsync(["admin", .. args], AdminEnv(), netns: Netns);
        Assert.True(result.ExitCode == 0, $"ferry admin {string.Join(' ', args)} failed: {result}");
        return result.Stdout;
    }

    /// <summary>
    /// DELETE on the admin API (a revocation, a removal), requiring success. Tests that time what follows use this rather than
    /// the CLI, so the clock measures the controller and the data plane, not the start of a process.
    /// </summary>
    public async Task DeleteAsync(string path)
    {
        using var http = Http();
        var response = await http.DeleteAsync(path, TestContext.Current.CancellationToken);
        Assert.True(response.IsSuccessStatusCode, $"DELETE {path}: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken)}");
    }

    /// <summary>Runs 'ferry admin … --json' and parses the output.</summary>
    public async Task<T> AdminJsonAsync<T>(params string[] args)
    {
        var stdout = await AdminAsync([.. args, "--json"]);
        return JsonSerializer.Deserialize<T>(stdout, Json)!;
    }

    public Task<CommandResult> AdminRawAsync(params string[] args) => FerryCli.RunAsync(["admin", .. args], AdminEnv(), netns: Netns);

    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    /// <summary>An HTTP client that trusts this controller by its fingerprint, optionally with the admin key.</summary>
    public HttpClient Http(bool withApiKey = true)
    {
        var http = new HttpClient(ControllerTrust.Create(Fingerprint, null).CreateHandler()) { BaseAddress = new Uri(Url), Timeout = TimeSpan.FromSeconds(30) };
        if (withApiKey)
        {
            http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", ApiKey);
        }
        return http;
    }

    public async Task<ConnectorView> ConnectorAsync(string name)
    {
        if (Netns is not null)
        {
            // The controller is not reachable from this namespace; ask from inside its own.
            return await AdminJsonAsync<ConnectorView>("connector", "show", name);
        }
        using var http = Http();
        return (await http.GetFromJsonAsync<ConnectorView>($"/api/v1/connectors/{name}", Json))!;
    }

    /// <summary>Provisions a connector and writes its tokens file exactly as 'provision --json' printed it.</summary>
    public async Task<string> ProvisionAsync(string network, string name, string directory)
    {
        var stdout = await AdminAsync("connector", "provision", "--network", network, "--name", name, "--json");
        var path = Path.Combine(directory, $"{name}.tokens.json");
        await File.WriteAllTextAsync(path, stdout);
        return path;
    }

    public FerryProcess StartConnector(string tokensPath, params string[] extra)
        => FerryProcess.Start("connector " + Path.GetFileNameWithoutExtension(tokensPath), ["connector", "--tokens", tokensPath, .. extra]);

    /// <summary>Polls the controller until the connector's view satisfies the condition (bounded), returning that view.</summary>
    public async Task<ConnectorView> WaitForConnectorAsync(string name, Func<ConnectorView, bool> condition, TimeSpan timeout, string what)
    {
        var deadline = DateTime.UtcNow + timeout;
        ConnectorView? last = null;
        while (DateTime.UtcNow < deadline)
        {
            last = await ConnectorAsync(name);
            if (condition(last))
            {
                return last;
            }
            await Task.Delay(100);
        }
        throw new Xunit.Sdk.XunitException($"connector {name} never became {what} within {timeout.TotalSeconds} s; last seen: {JsonSerializer.Serialize(last)}\ncontroller output:\n{Process.Output}");
    }

    public async ValueTask DisposeAsync()
    {
        await Process.DisposeAsync();
        if (_ownsDatabase)
        {
            await _database.DisposeAsync();
        }
        try
        {
            Directory.Delete(DataDirectory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

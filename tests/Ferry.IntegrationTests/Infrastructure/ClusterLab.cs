using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text.Json;

namespace Ferry.IntegrationTests.Infrastructure;

/// <summary>
/// A controller, a relay and an echo service, with as many connectors (real processes) in network "corp" and client
/// processes (each its own device, with a port forward to the echo service) as a test asks for.
/// </summary>
public sealed class ClusterLab : IAsyncDisposable
{
    private readonly List<ClusterClient> _clients = [];
    private readonly Dictionary<string, FerryProcess> _connectors = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _identities = new(StringComparer.Ordinal);

    private ClusterLab(ControllerInstance controller, FerryProcess relay, EchoServer echo, string key, string directory)
    {
        Controller = controller;
        Relay = relay;
        Echo = echo;
        Key = key;
        Directory = directory;
    }

    public ControllerInstance Controller { get; }

    /// <summary>Replica "b" on the same PostgreSQL, when the lab was started with <see cref="StartReplicatedAsync"/>.</summary>
    public ControllerInstance? Replica { get; private init; }
    public FerryProcess Relay { get; }
    public EchoServer Echo { get; }
    public string Key { get; }
    public string Directory { get; }
    public IReadOnlyList<ClusterClient> Clients => _clients;

    /// <summary>Network "corp" with resource "svc" (the echo service on 127.0.0.1) granted to service account "app", a relay, and no connector yet.</summary>
    public static async Task<ClusterLab> StartAsync(CancellationToken ct, params string[] controllerArgs)
    {
        var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite, controllerArgs);
        var dir = System.IO.Directory.CreateTempSubdirectory("ferry-cluster-").FullName;
        var relay = await TestDeployment.StartRelayAsync(controller, dir, ct);
        var echo = new EchoServer(IPAddress.Loopback);
        await controller.AdminAsync("network", "create", "corp");
        await controller.AdminAsync("resource", "add", "127.0.0.1", "--network", "corp", "--name", "svc", "--tcp", echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture));
        var account = await controller.AdminJsonAsync<JsonElement>("service-account", "create", "app");
        await controller.AdminAsync("policy", "grant", "svc", "--service-account", "app");
        return new ClusterLab(controller, relay, echo, account.GetProperty("key").GetString()!, dir);
    }

    /// <summary>As <see cref="StartAsync"/>, on PostgreSQL with two controller replicas ("a" is <see cref="Controller"/>, "b" is <see cref="Replica"/>); the relay knows both.</summary>
    public static async Task<ClusterLab> StartReplicatedAsync(CancellationToken ct, params string[] controllerArgs)
    {
        var controller = await ControllerInstance.StartAsync(StoreKind.Postgres, ["--replica-id", "a", .. controllerArgs]);
        var replica = await controller.StartReplicaAsync("b", controllerArgs);
        var dir = System.IO.Directory.CreateTempSubdirectory("ferry-cluster-").FullName;
        var relay = await TestDeployment.StartRelayAsync(controller, dir, ct, "--controller", $"{controller.Url},{replica.Url}");
        var echo = new EchoServer(IPAddress.Loopback);
        await controller.AdminAsync("network", "create", "corp");
        await controller.AdminAsync("resource", "add", "127.0.0.1", "--network", "corp", "--name", "svc", "--tcp", echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture));
        var account = await controller.AdminJsonAsync<JsonElement>("service-account", "create", "app");
        await controller.AdminAsync("policy", "grant", "svc", "--service-account", "app");
        return new ClusterLab(controller, relay, echo, account.GetProperty("key").GetString()!, dir) { Replica = replica };
    }

    /// <summary>Provisions connector <paramref name="name"/> (at <paramref name="location"/>) and runs it until it is online with STUN done.</summary>
    public async Task<FerryProcess> AddConnectorAsync(string name, string? location = null, string network = "corp", params string[] extra)
    {
        var stdout = await Controller.AdminAsync(["connector", "provision", "--network", network, "--name", name, "--json", .. location is null ? Array.Empty<string>() : ["--location", location]]);
        var tokens = Path.Combine(Directory, $"{name}.tokens.json");
        await File.WriteAllTextAsync(tokens, stdout);
        var process = Controller.StartConnector(tokens, extra);
        _connectors[name] = process;
        var view = await Controller.WaitForConnectorAsync(name, v => v.State == "online" && v.Stun.Status == "ok", TimeSpan.FromSeconds(30), "online with STUN done");
        _identities[name] = "connector/" + view.Id;
        return process;
    }

    public FerryProcess Connector(string name) => _connectors[name];

    /// <summary>The identity ("connector/cn_…") of connector <paramref name="name"/>.</summary>
    public string IdentityOf(string name) => _identities[name];

    /// <summary>The name of the connector with identity <paramref name="identity"/>.</summary>
    public string NameOf(string identity) => _identities.Single(i => i.Value == identity).Key;

    /// <summary>Starts a client process signed in as the service account, with a port forward to the echo service; returns once the forward listens.</summary>
    public async Task<ClusterClient> AddClientAsync(string? location = null, string? controllers = null, params string[] extraForwards)
    {
        var index = _clients.Count;
        var state = Path.Combine(Directory, $"client{index}");
        var port = Echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        string[] args = ["client", "--state", state, "up", "--controller", controllers ?? Controller.Url, "--controller-fingerprint", Controller.Fingerprint, "--socks", "off",
            "--device-name", $"d{index}", "--forward", $"0=127.0.0.1:{port}", .. extraForwards.SelectMany(f => new[] { "--forward", f }),
            .. location is null ? Array.Empty<string>() : ["--location", location]];
        var process = FerryProcess.Start($"client{index}", args, new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = Key });
        var client = new ClusterClient(process, state);
        client.Diagnostics = () => LogsFor(client);
        _clients.Add(client);
        var forwards = new List<IPEndPoint>();
        for (var i = 0; i <= extraForwards.Length; i++)
        {
            var line = await process.WaitForLineAsync(l => l.Contains("] forward ", StringComparison.Ordinal) && l.Contains(" listening on ", StringComparison.Ordinal)
                && !forwards.Any(f => l.EndsWith(" " + f, StringComparison.Ordinal)), TimeSpan.FromSeconds(60), $"forward {i}");
            forwards.Add(IPEndPoint.Parse(line[(line.LastIndexOf(' ') + 1)..]));
        }
        client.Forwards = forwards;

        // Ready as a user would wait for it: signed in with the grant and the network's connectors known, and the data plane up with
        // its relay. A flow sent sooner waits for all that only as long as a flow's open timeout (15 s), and twenty clients starting
        // at once on a loaded host have taken 16 s to get there.
        await process.WaitForLineAsync(l => l.Contains("Resources granted now: ", StringComparison.Ordinal) && !l.Contains("Resources granted now: 0", StringComparison.Ordinal),
            TimeSpan.FromSeconds(60), "signed in with its grants");
        await process.WaitForLineAsync(l => l.Contains("Relays in use: ", StringComparison.Ordinal) && !l.Contains("Relays in use: 0", StringComparison.Ordinal),
            TimeSpan.FromSeconds(60), "its data plane up with a relay");
        return client;
    }

    /// <summary>Starts <paramref name="count"/> clients at once.</summary>
    public async Task<ClusterClient[]> AddClientsAsync(int count, string? location = null)
    {
        // Processes start in parallel; the list keeps the order they were asked for.
        var starting = new List<Task<ClusterClient>>();
        for (var i = 0; i < count; i++)
        {
            starting.Add(AddClientAsync(location));
        }
        return await Task.WhenAll(starting);
    }

    /// <summary>Everything the processes printed, for failure messages.</summary>
    public string Logs()
        => string.Join("\n", new[] { ("controller", Controller.Process) }.Concat(Replica is null ? [] : [("replica b", Replica.Process)]).Concat(_connectors.Select(c => ($"connector {c.Key}", c.Value))).Concat(_clients.Take(4).Select(c => (c.Process.Name, c.Process)))
            .Select(p => $"--- {p.Item1}:\n{Tail(p.Item2.Output)}"));

    /// <summary>
    /// Benchmark hook: when FERRY_BENCH_FAILOVER names a file, appends one JSON line with the time from a connector's death to the
    /// client's next flow done elsewhere, and that client's first flow from cold as the reference. Nothing is asserted on it.
    /// </summary>
    public static void RecordFailover(string name, TimeSpan failover, ClusterClient client)
    {
        if (Environment.GetEnvironmentVariable("FERRY_BENCH_FAILOVER") is not { Length: > 0 } file || client.FirstFlow is not { } first)
        {
            return;
        }
        File.AppendAllText(file, JsonSerializer.Serialize(new { @case = name, failoverMs = failover.TotalMilliseconds, firstFlowMs = first.TotalMilliseconds }) + "\n");
    }

    /// <summary>What the controller, the connectors and one client printed, for a failure of that client.</summary>
    public string LogsFor(ClusterClient client)
        => string.Join("\n", new[] { ("controller", Controller.Process) }.Concat(_connectors.Select(c => ($"connector {c.Key}", c.Value))).Append((client.Process.Name, client.Process))
            .Select(p => $"--- {p.Item1}:\n{Tail(p.Item2.Output)}"));

    private static string Tail(string text) => text.Length > 6000 ? "…" + text[^6000..] : text;

    public async ValueTask DisposeAsync()
    {
        await Task.WhenAll(_clients.Select(c => c.Process.DisposeAsync().AsTask()));
        foreach (var connector in _connectors.Values)
        {
            await connector.DisposeAsync();
        }
        await Relay.DisposeAsync();
        await Echo.DisposeAsync();
        if (Replica is not null)
        {
            await Replica.DisposeAsync();
        }
        await Controller.DisposeAsync();
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>A client process of a <see cref="ClusterLab"/>: its forwards, and what its status says.</summary>
public sealed class ClusterClient(FerryProcess process, string state)
{
    public FerryProcess Process { get; } = process;
    public string State { get; } = state;
    public IReadOnlyList<IPEndPoint> Forwards { get; set; } = [];

    /// <summary>The logs that explain a failure of this client's flows (set by the lab that started it).</summary>
    public Func<string>? Diagnostics { get; set; }

    /// <summary>How long this client's first flow took: connector choice, ticket, relay binding and handshake from cold.</summary>
    public TimeSpan? FirstFlow { get; private set; }

    /// <summary>One new flow through forward <paramref name="forward"/>: <paramref name="size"/> random bytes out, the same bytes back, checked.</summary>
    public async Task EchoAsync(CancellationToken ct, int size = 32 * 1024, int forward = 0)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(Forwards[forward], ct);
        var stream = tcp.GetStream();
        var payload = RandomNumberGenerator.GetBytes(size);
        await stream.WriteAsync(payload, ct);
        tcp.Client.Shutdown(SocketShutdown.Send);
        var back = new byte[size];
        try
        {
            await stream.ReadExactlyAsync(back, ct).AsTask().WaitAsync(TimeSpan.FromSeconds(20), ct);
        }
        catch (Exception e) when (e is EndOfStreamException or IOException or TimeoutException)
        {
            throw new Xunit.Sdk.XunitException($"{Process.Name}: the echo of {size} bytes through forward {forward} failed after {clock.Elapsed.TotalMilliseconds:0} ms: {e.Message}\n{Diagnostics?.Invoke()}");
        }
        Assert.True(payload.AsSpan().SequenceEqual(back), $"{Process.Name}: echoed bytes differ");
        Assert.Equal(0, await stream.ReadAsync(new byte[1], ct));
        FirstFlow ??= clock.Elapsed;
    }

    /// <summary>The running client's status, as 'ferry client status' prints it.</summary>
    public async Task<JsonElement> StatusAsync()
    {
        var status = await FerryCli.RunAsync(["client", "--state", State, "status"]);
        Assert.True(status.ExitCode == 0, status.ToString());
        return JsonDocument.Parse(status.Stdout).RootElement.Clone();
    }

    /// <summary>The connectors this client holds a connection to now.</summary>
    public async Task<string[]> ConnectedToAsync()
        => [.. (await StatusAsync()).GetProperty("connectedTo").EnumerateArray().Select(e => e.GetString()!)];

    /// <summary>The connector this client's flows to <paramref name="network"/> go to now.</summary>
    public async Task<string?> RouteAsync(string network = "corp")
        => (await StatusAsync()).GetProperty("routes").EnumerateArray().Where(r => r.GetProperty("network").GetString() == network)
            .Select(r => r.TryGetProperty("connector", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString() : null).FirstOrDefault();
}

/// <summary>One TCP connection through a client's forward that echoes chunk after chunk, each checked, for as long as a test runs.</summary>
public sealed class LongFlow : IAsyncDisposable
{
    private readonly TcpClient _tcp = new();
    private NetworkStream? _stream;
    private long _sent;
    private int _seed;

    public long Bytes => _sent;

    /// <summary>Opens a flow and does one round trip; flows with different <paramref name="seed"/>s send different bytes, so crossed streams show.</summary>
    public static async Task<LongFlow> OpenAsync(IPEndPoint forward, CancellationToken ct, int seed = 0)
    {
        var flow = new LongFlow { _seed = seed };
        await flow._tcp.ConnectAsync(forward, ct);
        flow._stream = flow._tcp.GetStream();
        await flow.RoundTripAsync(ct);
        return flow;
    }

    /// <summary>Sends a 16 KiB chunk whose bytes depend on its offset in the stream, and checks that exactly it comes back.</summary>
    public async Task RoundTripAsync(CancellationToken ct)
    {
        var chunk = new byte[16 * 1024];
        for (var i = 0; i < chunk.Length; i++)
        {
            chunk[i] = (byte)(((_sent + i) * 31 + (_seed * 7919L)) % 251);
        }
        await _stream!.WriteAsync(chunk, ct);
        var back = new byte[chunk.Length];
        await _stream.ReadExactlyAsync(back, ct).AsTask().WaitAsync(TimeSpan.FromSeconds(20), ct);
        Assert.True(chunk.AsSpan().SequenceEqual(back), $"echoed bytes differ after {_sent} bytes");
        _sent += chunk.Length;
    }

    public ValueTask DisposeAsync()
    {
        _tcp.Dispose();
        return ValueTask.CompletedTask;
    }
}

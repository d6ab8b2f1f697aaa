using Ferry.Core.ControlPlane;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.NetworkTests.Infrastructure;

/// <summary>Where the client and the connector sit relative to the internet.</summary>
internal enum DirectPathTopology
{
    /// <summary>Each behind its own home-router NAT that maps endpoint-independently (plain MASQUERADE).</summary>
    BothBehindNat,

    /// <summary>The connector on the public segment with its own address; the client behind a symmetric NAT.</summary>
    SymmetricClientPublicConnector,

    /// <summary>Each behind its own symmetric NAT (MASQUERADE --random-fully).</summary>
    BothSymmetric,

    /// <summary>Both on one private segment (a switch) behind one NAT.</summary>
    SameSegment,
}

/// <summary>Impairments a <see cref="DirectPathLab"/> applies before any process starts.</summary>
internal sealed record DirectPathLabOptions
{
    /// <summary>The client's router drops every forwarded UDP packet; TCP still passes.</summary>
    public bool BlockClientUdp { get; init; }

    /// <summary>Added to every pass over the relay's own link, each way: a relayed round trip crosses it four times.</summary>
    public TimeSpan RelayLinkDelay { get; init; }
}

/// <summary>What the client's status said over a watched window.</summary>
internal sealed record PathWatch(PathStatus? Last, bool SawDirect, int Polls, TimeSpan Elapsed);

/// <summary>Whether plain UDP sockets on the client and connector hosts can reach each other in the lab, without Ferry.</summary>
internal sealed record UdpProbeResult(string? ClientMapped, string? ConnectorMapped, bool ClientHeardConnector, bool ConnectorHeardClient)
{
    public bool DirectPossible => ClientHeardConnector && ConnectorHeardClient;

    public override string ToString()
        => $"UDP probe: client mapped {ClientMapped ?? "(no answer)"}, connector mapped {ConnectorMapped ?? "(no answer)"}, client heard the connector: {ClientHeardConnector}, connector heard the client: {ConnectorHeardClient}";
}

/// <summary>
/// The NAT-traversal lab: a public segment with the controller and a relay (on its own link, so only relay traffic can be
/// delayed), the client and the connector placed per <see cref="DirectPathTopology"/>, a TCP echo service on the connector
/// host granted to a service account, and a client with a port forward to it. Counters on the connector host tell UDP
/// (direct) from relay-link bytes, independently of what Ferry reports.
/// </summary>
internal sealed class DirectPathLab : IAsyncDisposable
{
    public const string ControllerAddress = "198.18.0.1";
    public const string RelayAddress = "198.18.9.2";
    private const string RelayLinkPub = "198.18.9.1";
    // Where peers dial the relay when a user-space delay line stands in for netem: an address of the public router.
    private const string RelayFrontAddress = "198.18.8.1";
    public const int RelayPort = 30000;
    public const int StunPort = 3478;
    // A UDP reflector of the lab's own on the public segment, for the premise probe (not Ferry's STUN).
    private const int ReflectorPort = 3479;
    public const string ClientWan = "198.18.1.2";
    private const string ClientWanPub = "198.18.1.1";
    /// <summary>The connector NAT's WAN address, or the connector host's own address when it is public.</summary>
    public const string ConnectorWan = "198.18.2.2";
    private const string ConnectorWanPub = "198.18.2.1";
    public const string ClientHostAddress = "10.1.0.2";
    /// <summary>The client's address after <see cref="MoveClientAsync"/>: another subnet of the same router.</summary>
    public const string ClientMovedAddress = "10.1.1.2";
    private const string ClientLanRouter = "10.1.0.1";
    private const string ClientMovedRouter = "10.1.1.1";
    private const string ConnectorLanRouter = "10.2.0.1";
    private const string DirectMeter = "ferry-lab-direct";
    private const string RelayMeter = "ferry-lab-relay";
    private static readonly Lock BenchGate = new();

    private readonly NetworkLab _net = new();
    private readonly List<IAsyncDisposable> _owned = [];
    private readonly string _directory = Directory.CreateTempSubdirectory("ferry-direct-").FullName;
    private string _clientLan = "";
    private string _clientRouterLan = "";
    private string _relayDescription = "relay undelayed";
    private TcpDelayLine? _delayLine;
    private string _lastStatus = "(not read yet)";
    private string? _clientAddress;

    private DirectPathLab(DirectPathTopology topology, DirectPathLabOptions options)
    {
        Topology = topology;
        Options = options;
    }

    public DirectPathTopology Topology { get; }
    public DirectPathLabOptions Options { get; }

    /// <summary>The topology and impairments in a few words, for reports.</summary>
    public string Name => Topology
        + (Options.BlockClientUdp ? ", client UDP blocked" : "")
        + (Options.RelayLinkDelay > TimeSpan.Zero ? $", relay link +{Options.RelayLinkDelay.TotalMilliseconds:0} ms each way" : "");

    public string Pub { get; private set; } = "";
    public string RelayHost { get; private set; } = "";
    public string ClientRouter { get; private set; } = "";
    public string ClientHost { get; private set; } = "";
    public string? ConnectorRouter { get; private set; }
    public string ConnectorHost { get; private set; } = "";

    /// <summary>The connector host's own address (private, or public when the topology puts it on the public segment).</summary>
    public string ConnectorHostAddress { get; private set; } = "";

    /// <summary>The client host's current address.</summary>
    public string ClientAddress => _clientAddress ?? ClientHostAddress;

    public ControllerInstance Controller { get; private set; } = null!;
    public FerryProcess Relay { get; private set; } = null!;
    public FerryProcess Connector { get; private set; } = null!;
    public FerryProcess Client { get; private set; } = null!;
    public EchoServer Echo { get; private set; } = null!;

    /// <summary>The connector's id ("cn_…") as the controller knows it.</summary>
    public string ConnectorId { get; private set; } = "";

    /// <summary>The connector's data-plane UDP port (its QUIC and STUN socket).</summary>
    public int ConnectorUdpPort { get; private set; }

    /// <summary>Where the client's port forward to the echo service listens, inside <see cref="ClientHost"/>.</summary>
    public IPEndPoint Forward { get; private set; } = null!;

    public string ClientState => Path.Combine(_directory, "client");

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Builds the namespaces, links, routes, NATs, impairments and counters; starts no process.</summary>
    public static async Task<DirectPathLab> BuildAsync(DirectPathTopology topology, DirectPathLabOptions? options = null)
    {
        var lab = new DirectPathLab(topology, options ?? new DirectPathLabOptions());
        try
        {
            await lab.BuildNetworkAsync();
        }
        catch
        {
            await lab.DisposeAsync();
            throw;
        }
        return lab;
    }

    private async Task BuildNetworkAsync()
    {
        Pub = await _net.HostAsync("pub");
        RelayHost = await _net.HostAsync("rly");
        ClientRouter = await _net.HostAsync("cgw");
        ClientHost = await _net.HostAsync("cli");
        // pub routes between every site; the controller has an address of its own there, apart from any link.
        await NetworkLab.RunAsync("ip", "netns", "exec", Pub, "sysctl", "-qw", "net.ipv4.ip_forward=1");
        await NetworkLab.RunAsync("ip", "-n", Pub, "addr", "add", $"{ControllerAddress}/32", "dev", "lo");
        var (relayLinkPub, relayLinkRelay) = await _net.LinkAsync(Pub, $"{RelayLinkPub}/24", RelayHost, $"{RelayAddress}/24");
        await _net.DefaultRouteAsync(RelayHost, RelayLinkPub);

        var (_, clientWan) = await _net.LinkAsync(Pub, $"{ClientWanPub}/24", ClientRouter, $"{ClientWan}/24");
        await _net.DefaultRouteAsync(ClientRouter, ClientWanPub);
        await _net.NatAsync(ClientRouter, clientWan, symmetric: Topology is DirectPathTopology.SymmetricClientPublicConnector or DirectPathTopology.BothSymmetric);

        switch (Topology)
        {
            case DirectPathTopology.SameSegment:
            {
                // One switch: the router's LAN address on a bridge, both hosts plugged into it.
                var bridge = await _net.BridgeAsync(ClientRouter, $"{ClientLanRouter}/24");
                ConnectorHost = await _net.HostAsync("con");
                _clientRouterLan = bridge;
                _clientLan = await _net.JoinBridgeAsync(ClientRouter, bridge, ClientHost, $"{ClientHostAddress}/24");
                ConnectorHostAddress = "10.1.0.3";
                await _net.JoinBridgeAsync(ClientRouter, bridge, ConnectorHost, $"{ConnectorHostAddress}/24");
                await _net.DefaultRouteAsync(ConnectorHost, ClientLanRouter);
                break;
            }
            case DirectPathTopology.SymmetricClientPublicConnector:
                (_clientRouterLan, _clientLan) = await _net.LinkAsync(ClientRouter, $"{ClientLanRouter}/24", ClientHost, $"{ClientHostAddress}/24");
                ConnectorHost = await _net.HostAsync("con");
                ConnectorHostAddress = ConnectorWan;
                await _net.LinkAsync(Pub, $"{ConnectorWanPub}/24", ConnectorHost, $"{ConnectorWan}/24");
                await _net.DefaultRouteAsync(ConnectorHost, ConnectorWanPub);
                break;
            default:
            {
                (_clientRouterLan, _clientLan) = await _net.LinkAsync(ClientRouter, $"{ClientLanRouter}/24", ClientHost, $"{ClientHostAddress}/24");
                ConnectorRouter = await _net.HostAsync("ngw");
                ConnectorHost = await _net.HostAsync("con");
                ConnectorHostAddress = "10.2.0.2";
                var (_, connectorWan) = await _net.LinkAsync(Pub, $"{ConnectorWanPub}/24", ConnectorRouter, $"{ConnectorWan}/24");
                await _net.LinkAsync(ConnectorRouter, $"{ConnectorLanRouter}/24", ConnectorHost, $"{ConnectorHostAddress}/24");
                await _net.DefaultRouteAsync(ConnectorRouter, ConnectorWanPub);
                await _net.DefaultRouteAsync(ConnectorHost, ConnectorLanRouter);
                await _net.NatAsync(ConnectorRouter, connectorWan, symmetric: Topology == DirectPathTopology.BothSymmetric);
                break;
            }
        }
        await _net.DefaultRouteAsync(ClientHost, ClientLanRouter);

        if (Options.BlockClientUdp)
        {
            // Like a guest network that only lets TCP out: UDP dies at the client's router, both ways.
            await NetworkLab.RunAsync("ip", "netns", "exec", ClientRouter, "iptables", "-I", "FORWARD", "-p", "udp", "-j", "DROP");
        }

        // Counters on the connector host: its UDP other than STUN is the direct path; TCP to the relay's port is the relayed one.
        foreach (var (chain, direction) in new[] { ("INPUT", "--sport"), ("OUTPUT", "--dport") })
        {
            await Iptables(ConnectorHost, "-A", chain, "-p", "udp", "!", direction, StunPort.ToString(CultureInfo.InvariantCulture), "-m", "comment", "--comment", DirectMeter);
            await Iptables(ConnectorHost, "-A", chain, "-p", "tcp", direction, RelayPort.ToString(CultureInfo.InvariantCulture), "-m", "comment", "--comment", RelayMeter);
        }

        if (Options.RelayLinkDelay > TimeSpan.Zero)
        {
            var ms = ((int)Options.RelayLinkDelay.TotalMilliseconds).ToString(CultureInfo.InvariantCulture);
            if (await TryNetemAsync(Pub, relayLinkPub, ms))
            {
                await NetworkLab.RunAsync("ip", "netns", "exec", RelayHost, "tc", "qdisc", "add", "dev", relayLinkRelay, "root", "netem", "delay", $"{ms}ms", "limit", "100000");
                _relayDescription = $"tc netem delay {ms} ms on both ends of the relay's link";
            }
            else
            {
                // No sch_netem in this kernel: peers dial a delay line on the public router, which holds each chunk
                // as netem would and passes it on to the relay. Only relay links go through it; STUN and the
                // controller do not, which changes nothing this lab measures.
                await NetworkLab.RunAsync("ip", "-n", Pub, "addr", "add", $"{RelayFrontAddress}/32", "dev", "lo");
                _delayLine = TcpDelayLine.Start(Pub, new IPEndPoint(IPAddress.Parse(RelayFrontAddress), RelayPort), new IPEndPoint(IPAddress.Parse(RelayAddress), RelayPort), Options.RelayLinkDelay);
                _owned.Add(_delayLine);
                _relayDescription = $"user-space TCP delay line of {ms} ms each way in front of the relay (no sch_netem in this kernel)";
            }
        }
    }

    private static async Task<bool> TryNetemAsync(string ns, string device, string ms)
    {
        if (!File.Exists("/usr/sbin/tc") && !File.Exists("/sbin/tc"))
        {
            return false;
        }
        try
        {
            await NetworkLab.RunAsync("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", device, "root", "netem", "delay", $"{ms}ms", "limit", "100000");
            return true;
        }
        catch (InvalidOperationException e) when (e.Message.Contains("qdisc kind is unknown", StringComparison.Ordinal))
        {
            return false;
        }
    }

    private static Task Iptables(string ns, params string[] args) => NetworkLab.RunAsync("ip", ["netns", "exec", ns, "iptables", .. args]);

    /// <summary>
    /// The lab's premise, without Ferry: plain UDP sockets on the client and connector hosts learn their public addresses
    /// from a reflector on the public segment, then send to each other's public and host addresses and answer whatever
    /// arrives. Bounded to a few seconds.
    /// </summary>
    public async Task<UdpProbeResult> ProbeDirectUdpAsync()
    {
        using var reflector = NetNamespace.Create(Pub, () => Bound(IPAddress.Parse(ControllerAddress), ReflectorPort));
        using var client = NetNamespace.Create(ClientHost, () => Bound(IPAddress.Any, 0));
        using var connector = NetNamespace.Create(ConnectorHost, () => Bound(IPAddress.Any, 0));
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var reflecting = Task.Run(async () =>
        {
            var buffer = new byte[256];
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    var from = await reflector.ReceiveFromAsync(buffer, SocketFlags.None, new IPEndPoint(IPAddress.Any, 0), stop.Token);
                    await reflector.SendToAsync(Encoding.ASCII.GetBytes("you " + from.RemoteEndPoint), SocketFlags.None, from.RemoteEndPoint, stop.Token);
                }
                catch (SocketException)
                {
                }
            }
        }, CancellationToken.None);
        var reflectorEndPoint = new IPEndPoint(IPAddress.Parse(ControllerAddress), ReflectorPort);
        var clientHeard = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var connectorHeard = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var clientMapped = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var connectorMapped = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var listeners = new[]
        {
            Task.Run(() => AnswerAsync(client, clientMapped, clientHeard, stop.Token), CancellationToken.None),
            Task.Run(() => AnswerAsync(connector, connectorMapped, connectorHeard, stop.Token), CancellationToken.None),
        };
        try
        {
            var deadline = Stopwatch.StartNew();
            while (deadline.Elapsed < TimeSpan.FromSeconds(3) && !(clientHeard.Task.IsCompleted && connectorHeard.Task.IsCompleted))
            {
                await Poke(client, reflectorEndPoint, "who");
                await Poke(connector, reflectorEndPoint, "who");
                if (clientMapped.Task.IsCompleted && connectorMapped.Task.IsCompleted)
                {
                    foreach (var target in new[] { connectorMapped.Task.Result, $"{ConnectorHostAddress}:{((IPEndPoint)connector.LocalEndPoint!).Port}" })
                    {
                        await Poke(client, IPEndPoint.Parse(target), "hello");
                    }
                    foreach (var target in new[] { clientMapped.Task.Result, $"{ClientAddress}:{((IPEndPoint)client.LocalEndPoint!).Port}" })
                    {
                        await Poke(connector, IPEndPoint.Parse(target), "hello");
                    }
                }
                await Task.Delay(100, Ct);
            }
        }
        finally
        {
            await stop.CancelAsync();
            reflector.Dispose();
            client.Dispose();
            connector.Dispose();
            await Task.WhenAll([reflecting, .. listeners]).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
        return new UdpProbeResult(
            clientMapped.Task.IsCompletedSuccessfully ? clientMapped.Task.Result : null,
            connectorMapped.Task.IsCompletedSuccessfully ? connectorMapped.Task.Result : null,
            clientHeard.Task.IsCompleted,
            connectorHeard.Task.IsCompleted);

        static Socket Bound(IPAddress address, int port)
        {
            var socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            socket.Bind(new IPEndPoint(address, port));
            return socket;
        }

        static async Task Poke(Socket socket, IPEndPoint to, string text)
        {
            try
            {
                await socket.SendToAsync(Encoding.ASCII.GetBytes(text), SocketFlags.None, to);
            }
            catch (SocketException)
            {
                // Unreachable from here (no route, or an ICMP error for an earlier send): what the probe is there to find out.
            }
        }

        static async Task AnswerAsync(Socket socket, TaskCompletionSource<string> mapped, TaskCompletionSource heard, CancellationToken ct)
        {
            var buffer = new byte[256];
            while (!ct.IsCancellationRequested)
            {
                try
                {
                    var result = await socket.ReceiveFromAsync(buffer, SocketFlags.None, new IPEndPoint(IPAddress.Any, 0), ct);
                    var text = Encoding.ASCII.GetString(buffer, 0, result.ReceivedBytes);
                    if (text.StartsWith("you ", StringComparison.Ordinal))
                    {
                        mapped.TrySetResult(text[4..]);
                        continue;
                    }
                    heard.TrySetResult();
                    if (text == "hello")
                    {
                        // Answer where it came from: a peer behind a symmetric NAT is reachable only there.
                        await socket.SendToAsync("ack"u8.ToArray(), SocketFlags.None, result.RemoteEndPoint, ct);
                    }
                }
                catch (SocketException)
                {
                }
                catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
                {
                    return;
                }
            }
        }
    }

    /// <summary>
    /// Starts the controller and relay on the public side, provisions a network with the echo service (127.0.0.1 on the
    /// connector host) granted to a service account, starts the connector and waits for it to be online with STUN run,
    /// then starts the client with a port forward to the service and waits for the forward and the grant.
    /// </summary>
    public async Task StartFerryAsync()
    {
        Echo = NetNamespace.Create(ConnectorHost, () => new EchoServer(IPAddress.Loopback));
        _owned.Add(Echo);
        Controller = await ControllerInstance.StartInAsync(Pub, ControllerAddress);
        _owned.Add(Controller);

        var relayTokens = Path.Combine(_directory, "relay.json");
        await File.WriteAllTextAsync(relayTokens, await Controller.AdminAsync("relay", "provision", "--name", "pub-relay", "--json"), Ct);
        var port = RelayPort.ToString(CultureInfo.InvariantCulture);
        string[] listen = _delayLine is null
            ? ["--listen", $"{RelayAddress}:{port}"]
            : ["--listen", $"0.0.0.0:{port}", "--advertise", RelayFrontAddress];
        Relay = FerryProcess.Start("relay", ["relay", "--tokens", relayTokens, .. listen, "--stun", $"{RelayAddress}:{StunPort}"], netns: RelayHost);
        _owned.Add(Relay);
        await Relay.WaitForLineAsync(l => l.Contains("Relay links accepted", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "relay listening");

        var echoPort = Echo.Port.ToString(CultureInfo.InvariantCulture);
        await Controller.AdminAsync("network", "create", "site");
        await Controller.AdminAsync("resource", "add", "127.0.0.1", "--network", "site", "--name", "data", "--tcp", echoPort);
        var key = JsonDocument.Parse(await Controller.AdminAsync("service-account", "create", "app", "--json")).RootElement.GetProperty("key").GetString();
        await Controller.AdminAsync("policy", "grant", "data", "--service-account", "app");
        var connectorTokens = await Controller.ProvisionAsync("site", "site-1", _directory);

        Connector = FerryProcess.Start("connector", ["connector", "--tokens", connectorTokens], netns: ConnectorHost);
        _owned.Add(Connector);
        var view = await Controller.WaitForConnectorAsync("site-1", v => v.State == "online" && v.Stun.Status != "not-run", TimeSpan.FromSeconds(45), "online with STUN run");
        ConnectorId = view.Id;
        var dataPlane = await Connector.WaitForLineAsync(l => l.Contains("Data plane on UDP ", StringComparison.Ordinal), TimeSpan.FromSeconds(10), "data plane socket");
        var endpoint = dataPlane[(dataPlane.IndexOf("Data plane on UDP ", StringComparison.Ordinal) + "Data plane on UDP ".Length)..].Split(' ')[0];
        ConnectorUdpPort = IPEndPoint.Parse(endpoint).Port;

        Client = FerryProcess.Start("client",
            ["client", "--state", ClientState, "up", "--controller", Controller.Url, "--controller-fingerprint", Controller.Fingerprint, "--socks", "off", "--forward", $"0=127.0.0.1:{echoPort}"],
            new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = key }, netns: ClientHost);
        _owned.Add(Client);
        var forward = await Client.WaitForLineAsync(l => l.Contains($"forward 127.0.0.1:{echoPort} listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "forward listener");
        Forward = IPEndPoint.Parse(forward[(forward.LastIndexOf(' ') + 1)..]);
        await Client.WaitForLineAsync(l => l.Contains("Resources granted now: 1", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "grant");
    }

    /// <summary>Opens the long-running TCP stream through the client's port forward (disposed with the lab).</summary>
    public async Task<ContinuousTransfer> StartTransferAsync()
    {
        var transfer = await ContinuousTransfer.StartAsync(ClientHost, Forward, Ct);
        _owned.Add(transfer);
        // The first bytes back prove the flow is open end to end before any path is judged.
        await transfer.WaitForProgressAsync(64 * 1024, TimeSpan.FromSeconds(30), "while the flow was opening", Diagnostics);
        return transfer;
    }

    /// <summary>The "paths" entry for this lab's connector in 'ferry client status', or null when there is none (the raw JSON is kept for diagnostics).</summary>
    public async Task<PathStatus?> PathAsync()
    {
        var result = await FerryCli.RunAsync(["client", "--state", ClientState, "status"], timeout: TimeSpan.FromSeconds(20));
        if (result.ExitCode != 0)
        {
            _lastStatus = $"'ferry client status' failed: {result}";
            return null;
        }
        _lastStatus = result.Stdout;
        try
        {
            using var document = JsonDocument.Parse(result.Stdout);
            if (!document.RootElement.TryGetProperty("paths", out var paths) || paths.ValueKind != JsonValueKind.Array)
            {
                _lastStatus = "(the status has no \"paths\" array)\n" + result.Stdout;
                return null;
            }
            return paths.Deserialize<PathStatus[]>(ControllerInstance.Json)?.FirstOrDefault(p => p.Connector?.EndsWith(ConnectorId, StringComparison.Ordinal) == true);
        }
        catch (JsonException e)
        {
            _lastStatus = $"(unreadable status: {e.Message})\n{result.Stdout}";
            return null;
        }
    }

    /// <summary>
    /// Polls the client's status until the path to the connector has <paramref name="kind"/>, failing after
    /// <paramref name="timeout"/> or as soon as <paramref name="transfer"/> breaks; returns that path.
    /// </summary>
    public async Task<PathStatus> WaitForPathAsync(string kind, TimeSpan timeout, ContinuousTransfer? transfer, string why)
    {
        var watch = Stopwatch.StartNew();
        PathStatus? last = null;
        var polls = 0;
        while (true)
        {
            last = await PathAsync();
            polls++;
            if (last?.Kind == kind)
            {
                return last;
            }
            if (transfer?.Fault is { } fault)
            {
                throw new Xunit.Sdk.XunitException($"the stream broke while waiting for the path to become '{kind}' ({why}): {fault}{Diagnostics()}");
            }
            if (watch.Elapsed > timeout)
            {
                throw new Xunit.Sdk.XunitException(
                    $"expected the client's path to connector {ConnectorId} to become '{kind}' within {timeout.TotalSeconds:0} s ({why}); after {polls} polls it is {Describe(last)}{Diagnostics()}");
            }
            await Task.Delay(250, Ct);
        }
    }

    /// <summary>
    /// Polls the client's status until the path reports why the direct search failed (directFailure set) or
    /// <paramref name="timeout"/> passes, noting whether it was ever direct; fails only if the stream breaks.
    /// </summary>
    public async Task<PathWatch> WatchUntilDirectFailureAsync(TimeSpan timeout, ContinuousTransfer transfer)
    {
        var watch = Stopwatch.StartNew();
        PathStatus? last = null;
        var sawDirect = false;
        var polls = 0;
        while (watch.Elapsed < timeout)
        {
            last = await PathAsync();
            polls++;
            sawDirect |= last?.Kind == "direct";
            if (transfer.Fault is { } fault)
            {
                throw new Xunit.Sdk.XunitException($"the stream broke while the path was watched: {fault}{Diagnostics()}");
            }
            if (!string.IsNullOrEmpty(last?.DirectFailure))
            {
                break;
            }
            await Task.Delay(250, Ct);
        }
        return new PathWatch(last, sawDirect, polls, watch.Elapsed);
    }

    /// <summary>Bytes counted on the connector host so far: UDP other than STUN (the direct path) and TCP to or from the relay's port.</summary>
    public async Task<(long Direct, long Relayed)> MeterAsync()
    {
        long direct = 0, relayed = 0;
        foreach (var chain in new[] { "INPUT", "OUTPUT" })
        {
            var listing = await ExternalProcess.CaptureAsync("ip", ["netns", "exec", ConnectorHost, "iptables", "-nvxL", chain], TimeSpan.FromSeconds(20), Ct);
            foreach (var line in listing.Stdout.Split('\n'))
            {
                var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (fields.Length < 2 || !long.TryParse(fields[1], CultureInfo.InvariantCulture, out var bytes))
                {
                    continue;
                }
                if (line.Contains(DirectMeter, StringComparison.Ordinal))
                {
                    direct += bytes;
                }
                else if (line.Contains(RelayMeter, StringComparison.Ordinal))
                {
                    relayed += bytes;
                }
            }
        }
        return (direct, relayed);
    }

    /// <summary>
    /// Lets 512 KiB more of the stream come back and checks, on the connector host's counters, which path carried them:
    /// at least as many bytes on the expected one and under a quarter of that on the other.
    /// </summary>
    public async Task RequireCarriedByAsync(string kind, ContinuousTransfer transfer, string when)
    {
        const long window = 512 * 1024;
        var before = await MeterAsync();
        Xunit.Sdk.XunitException? stalled = null;
        try
        {
            await transfer.WaitForProgressAsync(window, TimeSpan.FromSeconds(30), when, Diagnostics);
        }
        catch (Xunit.Sdk.XunitException e)
        {
            stalled = e;
        }
        var after = await MeterAsync();
        var (direct, relayed) = (after.Direct - before.Direct, after.Relayed - before.Relayed);
        if (stalled is not null)
        {
            // Where the packets went while nothing came back tells a dead path from a dead relay.
            throw new Xunit.Sdk.XunitException($"(meanwhile the connector host counted {direct} B of UDP and {relayed} B on relay links) {stalled.Message}", stalled);
        }
        var (expected, other) = kind == "direct" ? (direct, relayed) : (relayed, direct);
        Assert.True(expected >= window && other < window / 4,
            $"while {window} B of the stream came back {when}, the connector host counted {direct} B of UDP (direct) and {relayed} B on relay links; "
            + $"the {kind} path should have carried them{Diagnostics()}");
    }

    /// <summary>Drops UDP between the two sites on the public router, both ways; the relay stays reachable.</summary>
    public Task CutDirectAsync() => DirectRulesAsync("-I");

    /// <summary>Removes what <see cref="CutDirectAsync"/> added.</summary>
    public Task RestoreDirectAsync() => DirectRulesAsync("-D");

    private async Task DirectRulesAsync(string action)
    {
        Assert.True(Topology != DirectPathTopology.SameSegment, "a same-segment path does not cross the public router");
        await Iptables(Pub, action, "FORWARD", "-p", "udp", "-s", ClientWan, "-d", ConnectorWan, "-j", "DROP");
        await Iptables(Pub, action, "FORWARD", "-p", "udp", "-s", ConnectorWan, "-d", ClientWan, "-j", "DROP");
    }

    /// <summary>
    /// The client host moves to another subnet of its router, as after a DHCP change: the new address first, then the
    /// default route through the new subnet, then the old address goes. Its sockets stay open.
    /// </summary>
    public async Task MoveClientAsync()
    {
        Assert.True(_clientAddress is null, "the client moves once");
        await NetworkLab.RunAsync("ip", "-n", ClientRouter, "addr", "add", $"{ClientMovedRouter}/24", "dev", _clientRouterLan);
        await NetworkLab.RunAsync("ip", "-n", ClientHost, "addr", "add", $"{ClientMovedAddress}/24", "dev", _clientLan);
        await NetworkLab.RunAsync("ip", "-n", ClientHost, "route", "replace", "default", "via", ClientMovedRouter);
        await NetworkLab.RunAsync("ip", "-n", ClientHost, "addr", "del", $"{ClientHostAddress}/24", "dev", _clientLan);
        _clientAddress = ClientMovedAddress;
    }

    /// <summary>The client's log lines about its path to this lab's connector.</summary>
    public IReadOnlyList<string> ClientPathLines()
        => [.. Client.Output.Split('\n').Where(l => l.Contains("Path to ", StringComparison.Ordinal) && l.Contains(ConnectorId, StringComparison.Ordinal))];

    /// <summary>The host part of a path's remote address, or null (a relayed path names its relay).</summary>
    public static string? RemoteHost(PathStatus path) => path.Remote is not null && IPEndPoint.TryParse(path.Remote, out var endpoint) ? endpoint.Address.ToString() : null;

    /// <summary>
    /// Benchmark hook: when FERRY_BENCH_TIME_TO_DIRECT names a file, appends one JSON line with this topology's time to
    /// the first direct path and the remote it reached. Nothing is asserted on it.
    /// </summary>
    public void RecordTimeToDirect(string topology, PathStatus path)
    {
        if (Environment.GetEnvironmentVariable("FERRY_BENCH_TIME_TO_DIRECT") is not { Length: > 0 } file)
        {
            return;
        }
        var line = JsonSerializer.Serialize(new { topology, directAfterMs = path.DirectAfterMs, remote = path.Remote }) + "\n";
        lock (BenchGate)
        {
            File.AppendAllText(file, line);
        }
    }

    public static string Describe(PathStatus? path) => path is null ? "missing from the status" : JsonSerializer.Serialize(path, ControllerInstance.Json);

    /// <summary>Everything needed to tell why a test failed: the lab, the last status, counters and every process's output.</summary>
    public string Diagnostics()
    {
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"\n--- lab: {Name}, {_relayDescription}, client at {ClientAddress}, connector at {ConnectorHostAddress} (UDP port {ConnectorUdpPort})");
        if (_delayLine is not null)
        {
            text.Append(CultureInfo.InvariantCulture, $", delay line: {_delayLine.Connections} connections{(_delayLine.Fault is { } fault ? ", fault: " + fault : "")}");
        }
        foreach (var owned in _owned.OfType<ContinuousTransfer>())
        {
            text.Append(CultureInfo.InvariantCulture, $"\n--- {owned}");
        }
        text.Append(CultureInfo.InvariantCulture, $"\n--- last client status:\n{_lastStatus}");
        foreach (var (name, process) in new[] { ("client", Client), ("connector", Connector), ("relay", Relay) })
        {
            if (process is not null)
            {
                text.Append(CultureInfo.InvariantCulture, $"\n--- {name}:\n{process.Output}");
            }
        }
        return text.ToString();
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var owned in Enumerable.Reverse(_owned))
        {
            try
            {
                await owned.DisposeAsync();
            }
#pragma warning disable CA1031 // Cleanup goes on whatever one part throws; the namespaces must still go.
            catch (Exception)
#pragma warning restore CA1031
            {
            }
        }
        await _net.DisposeAsync();
        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

using Ferry.Core.Api;
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

    /// <summary>A second relay on a link of its own, so a relayed connection has somewhere to go when one dies.</summary>
    public bool TwoRelays { get; init; }

    /// <summary>
    /// A host for a second client on another subnet of the connector's router (<see cref="DirectPathLab.SecondClientAddress"/>):
    /// its direct path to the connector never crosses the public router. Needs a topology with a connector router.
    /// </summary>
    public bool SecondClientSite { get; init; }
}

/// <summary>A client process of the lab with its state folder and the port forward to the echo service.</summary>
internal sealed record LabClient(string Host, string State, FerryProcess Process, IPEndPoint Forward);

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
    public const string Relay2Address = "198.18.10.2";
    private const string Relay2LinkPub = "198.18.10.1";
    /// <summary>The second client's host address, behind the connector's router (see <see cref="DirectPathLabOptions.SecondClientSite"/>).</summary>
    public const string SecondClientAddress = "10.3.0.2";
    private const string SecondClientSubnet = "10.3.0.0/24";
    private const string SecondClientRouter = "10.3.0.1";
    // The ports the client's router hands out after ExpireClientNatMappingsAsync(newPorts: true): none the lab used before.
    public const int RenumberedPortLow = 40000;
    public const int RenumberedPortHigh = 40099;
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
    private string _clientWan = "";
    private string _serviceAccountKey = "";
    private string _echoPort = "";

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
    public string? Relay2Host { get; private set; }
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

    /// <summary>The second relay, with <see cref="DirectPathLabOptions.TwoRelays"/>.</summary>
    public FerryProcess? Relay2 { get; private set; }

    /// <summary>The namespace for the second client, with <see cref="DirectPathLabOptions.SecondClientSite"/>.</summary>
    public string? SecondClientHost { get; private set; }
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

        if (Options.TwoRelays)
        {
            Relay2Host = await _net.HostAsync("rl2");
            await _net.LinkAsync(Pub, $"{Relay2LinkPub}/24", Relay2Host, $"{Relay2Address}/24");
            await _net.DefaultRouteAsync(Relay2Host, Relay2LinkPub);
        }

        var (_, clientWan) = await _net.LinkAsync(Pub, $"{ClientWanPub}/24", ClientRouter, $"{ClientWan}/24");
        _clientWan = clientWan;
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
                if (Options.SecondClientSite)
                {
                    SecondClientHost = await _net.HostAsync("cl2");
                    await _net.LinkAsync(ConnectorRouter, $"{SecondClientRouter}/24", SecondClientHost, $"{SecondClientAddress}/24");
                    await _net.DefaultRouteAsync(SecondClientHost, SecondClientRouter);
                }
                break;
            }
        }
        await _net.DefaultRouteAsync(ClientHost, ClientLanRouter);

        if (Options.BlockClientUdp)
        {
            // Like a guest network that only lets TCP out: UDP dies at the client's router, both ways.
            await NetworkLab.RunAsync("ip", "netns", "exec", ClientRouter, "iptables", "-I", "FORWARD", "-p", "udp", "-j", "DROP");
        }

        Assert.True(!Options.SecondClientSite || SecondClientHost is not null, "a second client site needs a topology with a connector router");

        // Counters on the connector host: its UDP other than STUN is the direct path; TCP to the relay's port is the relayed one.
        // The second client's direct traffic (from its own subnet) is not the first client's path, so it is not counted.
        foreach (var (chain, direction, peer) in new[] { ("INPUT", "--sport", "-s"), ("OUTPUT", "--dport", "-d") })
        {
            await Iptables(ConnectorHost, "-A", chain, "-p", "udp", "!", peer, SecondClientSubnet, "!", direction, StunPort.ToString(CultureInfo.InvariantCulture), "-m", "comment", "--comment", DirectMeter);
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
        if (Relay2Host is not null)
        {
            var relay2Tokens = Path.Combine(_directory, "relay2.json");
            await File.WriteAllTextAsync(relay2Tokens, await Controller.AdminAsync("relay", "provision", "--name", "pub-relay-2", "--json"), Ct);
            Relay2 = FerryProcess.Start("relay-2", ["relay", "--tokens", relay2Tokens, "--listen", $"{Relay2Address}:{port}", "--stun", $"{Relay2Address}:{StunPort}"], netns: Relay2Host);
            _owned.Add(Relay2);
            await Relay2.WaitForLineAsync(l => l.Contains("Relay links accepted", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "second relay listening");
            // Both online before any peer starts, so every peer links to both from the first relay list it gets.
            await WaitForRelaysOnlineAsync(2);
        }

        var echoPort = Echo.Port.ToString(CultureInfo.InvariantCulture);
        await Controller.AdminAsync("network", "create", "site");
        await Controller.AdminAsync("resource", "add", "127.0.0.1", "--network", "site", "--name", "data", "--tcp", echoPort);
        var key = JsonDocument.Parse(await Controller.AdminAsync("service-account", "create", "app", "--json")).RootElement.GetProperty("key").GetString()!;
        _serviceAccountKey = key;
        _echoPort = echoPort;
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

    private async Task WaitForRelaysOnlineAsync(int count)
    {
        var watch = Stopwatch.StartNew();
        RelayView[] relays = [];
        while (watch.Elapsed < TimeSpan.FromSeconds(30))
        {
            relays = await Controller.AdminJsonAsync<RelayView[]>("relay", "list");
            if (relays.Count(r => r.State == "online") == count)
            {
                return;
            }
            await Task.Delay(200, Ct);
        }
        throw new Xunit.Sdk.XunitException($"expected {count} relays online within 30 s; the controller lists {string.Join(", ", relays.Select(r => $"{r.Name} {r.State}"))}{Diagnostics()}");
    }

    /// <summary>The relay process whose identity ("relay/rl_…") a relayed path names, and the other one.</summary>
    public async Task<(FerryProcess Carrying, FerryProcess Other, string OtherIdentity)> RelaysByPathAsync(PathStatus relayed)
    {
        Assert.True(Relay2 is not null, "the lab has one relay");
        var relays = await Controller.AdminJsonAsync<RelayView[]>("relay", "list");
        var carrying = relays.FirstOrDefault(r => relayed.Remote?.EndsWith(r.Id, StringComparison.Ordinal) == true)
            ?? throw new Xunit.Sdk.XunitException($"the relayed path names {relayed.Remote}, which is none of the relays {string.Join(", ", relays.Select(r => r.Id))}{Diagnostics()}");
        var other = relays.Single(r => r.Id != carrying.Id);
        return carrying.Name == "pub-relay" ? (Relay, Relay2, $"relay/{other.Id}") : (Relay2, Relay, $"relay/{other.Id}");
    }

    /// <summary>
    /// Starts a second client (another device of the same service account) on <see cref="SecondClientHost"/>, with its own
    /// port forward to the echo service, and waits for the forward and the grant.
    /// </summary>
    public async Task<LabClient> StartSecondClientAsync()
    {
        var host = SecondClientHost ?? throw new InvalidOperationException("the lab was built without a second client site");
        var state = Path.Combine(_directory, "client-2");
        var process = FerryProcess.Start("client-2",
            ["client", "--state", state, "up", "--controller", Controller.Url, "--controller-fingerprint", Controller.Fingerprint, "--socks", "off", "--forward", $"0=127.0.0.1:{_echoPort}"],
            new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = _serviceAccountKey }, netns: host);
        _owned.Add(process);
        SecondClient = process;
        var forward = await process.WaitForLineAsync(l => l.Contains($"forward 127.0.0.1:{_echoPort} listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "second client's forward listener");
        await process.WaitForLineAsync(l => l.Contains("Resources granted now: 1", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "second client's grant");
        return new LabClient(host, state, process, IPEndPoint.Parse(forward[(forward.LastIndexOf(' ') + 1)..]));
    }

    /// <summary>The second client's process, once started.</summary>
    public FerryProcess? SecondClient { get; private set; }

    /// <summary>Opens a long-running TCP stream through <paramref name="client"/>'s port forward (disposed with the lab).</summary>
    public async Task<ContinuousTransfer> StartTransferAsync(LabClient client)
    {
        var transfer = await ContinuousTransfer.StartAsync(client.Host, client.Forward, Ct);
        _owned.Add(transfer);
        await transfer.WaitForProgressAsync(64 * 1024, TimeSpan.FromSeconds(30), "while the second client's flow was opening", Diagnostics);
        return transfer;
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
    public Task<PathStatus?> PathAsync() => PathAsync(ClientState);

    /// <summary>The same for the client whose state folder is <paramref name="state"/>.</summary>
    public async Task<PathStatus?> PathAsync(string state)
    {
        var result = await FerryCli.RunAsync(["client", "--state", state, "status"], timeout: TimeSpan.FromSeconds(20));
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
    /// <param name="state">Another client's state folder (the lab's client by default).</param>
    /// <param name="also">A further condition the path must meet.</param>
    public async Task<PathStatus> WaitForPathAsync(string kind, TimeSpan timeout, ContinuousTransfer? transfer, string why, string? state = null, Func<PathStatus, bool>? also = null)
    {
        var watch = Stopwatch.StartNew();
        PathStatus? last = null;
        var polls = 0;
        while (true)
        {
            last = await PathAsync(state ?? ClientState);
            polls++;
            if (last?.Kind == kind && (also is null || also(last)))
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
        // Packets already in flight on the old path when the client moved still land there (a relayed window is large: the
        // relay is 160 ms slower in some labs); the meter starts once they have had a moment to drain.
        await transfer.WaitForProgressAsync(window / 4, TimeSpan.FromSeconds(30), when, Diagnostics);
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
    /// Feeds UDP between the two sites on the public router through <see cref="NfQueueImpairment"/> (netem's loss, delay,
    /// jitter and reorder); disposing it takes the rules out and lets every held packet go.
    /// </summary>
    public async Task<DirectImpairment> ImpairDirectAsync(Impairment impairment)
    {
        Assert.True(Topology != DirectPathTopology.SameSegment, "a same-segment path does not cross the public router");
        const ushort queue = 7;
        var holder = NfQueueImpairment.Bind(Pub, queue, impairment);
        var handle = new DirectImpairment(this, holder);
        _owned.Add(handle);
        // --queue-bypass: should the holder go, packets pass instead of piling up unanswered.
        await handle.RulesAsync("-I");
        return handle;
    }

    /// <summary>An <see cref="ImpairDirectAsync"/> in force.</summary>
    internal sealed class DirectImpairment(DirectPathLab lab, NfQueueImpairment holder) : IAsyncDisposable
    {
        private bool _removed;

        public NfQueueImpairment Queue => holder;

        internal async Task RulesAsync(string action)
        {
            foreach (var (from, to) in new[] { (ClientWan, ConnectorWan), (ConnectorWan, ClientWan) })
            {
                await Iptables(lab.Pub, action, "FORWARD", "-p", "udp", "-s", from, "-d", to, "-j", "NFQUEUE", "--queue-num", "7", "--queue-bypass");
            }
        }

        public async ValueTask DisposeAsync()
        {
            if (!_removed)
            {
                _removed = true;
                await RulesAsync("-D");
                holder.Dispose();
            }
        }
    }

    /// <summary>The public router drops <paramref name="probability"/> of the TCP segments to and from either relay at random; TCP retransmits them.</summary>
    public async Task DropOnRelayLinksAsync(double probability)
    {
        var p = probability.ToString(CultureInfo.InvariantCulture);
        var port = RelayPort.ToString(CultureInfo.InvariantCulture);
        foreach (var match in new[] { "--dport", "--sport" })
        {
            await Iptables(Pub, "-A", "FORWARD", "-p", "tcp", match, port, "-m", "statistic", "--mode", "random", "--probability", p, "-j", "DROP");
        }
    }

    /// <summary>
    /// The client's NAT forgets its UDP mappings (conntrack -D on its router, as when they time out or the router reboots).
    /// With <paramref name="newPorts"/> it also hands out other public ports from then on (still one per inside socket,
    /// whatever the destination), as many NATs do for a mapping made again. TCP mappings (the relay links) are kept.
    /// </summary>
    public async Task ExpireClientNatMappingsAsync(bool newPorts)
    {
        if (newPorts)
        {
            // Ahead of the plain MASQUERADE, for UDP only (a port range needs a protocol); TCP keeps its rule and mappings.
            await Iptables(ClientRouter, "-t", "nat", "-I", "POSTROUTING", "1", "-o", _clientWan, "-p", "udp", "-j", "MASQUERADE", "--to-ports",
                $"{RenumberedPortLow.ToString(CultureInfo.InvariantCulture)}-{RenumberedPortHigh.ToString(CultureInfo.InvariantCulture)}");
        }
        // conntrack exits 1 when nothing matched; the check below tells.
        var result = await ExternalProcess.CaptureAsync("ip", ["netns", "exec", ClientRouter, "conntrack", "-D", "-p", "udp"], TimeSpan.FromSeconds(20), Ct);
        Assert.True(result.Stderr.Contains("flow entries have been deleted", StringComparison.Ordinal) && !result.Stderr.Contains(" 0 flow entries", StringComparison.Ordinal),
            $"conntrack -D -p udp on the client's router must delete its UDP mappings: {result}");
    }

    /// <summary>The client's router's UDP mappings now, as conntrack lists them.</summary>
    public async Task<string> ClientNatMappingsAsync()
        => (await ExternalProcess.CaptureAsync("ip", ["netns", "exec", ClientRouter, "conntrack", "-L", "-p", "udp"], TimeSpan.FromSeconds(20), Ct)).Stdout;

    /// <summary>Whether the conntrack tool (Debian package conntrack) is there to flush NAT mappings with.</summary>
    public static bool HasConntrack => File.Exists("/usr/sbin/conntrack") || File.Exists("/sbin/conntrack");

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
        foreach (var owned in _owned.OfType<DirectImpairment>())
        {
            text.Append(CultureInfo.InvariantCulture, $"\n--- {owned.Queue}");
        }
        foreach (var (name, process) in new[] { ("client", Client), ("second client", SecondClient), ("connector", Connector), ("relay", Relay), ("second relay", Relay2) })
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

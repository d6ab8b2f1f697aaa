using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using Ferry.Core.ControlPlane;
using Ferry.Core.Paths;
using Ferry.Paths.Ice;
using Ferry.Quic;
using Ferry.Relay;
using Microsoft.Extensions.Logging;

namespace Ferry.Paths;

/// <summary>
/// A client's or connector's data plane: one QUIC endpoint that owns the UDP socket (STUN and connectivity checks share it,
/// told apart by first byte), a relay pool whose packets become one relayed QUIC path per remote peer, and the
/// <see cref="IceAgent"/> that finds direct paths. Relayed works at once and always; the client's <see cref="PathSelector"/>
/// moves each connection to a direct path when one works and is quicker.
/// </summary>
public sealed partial class DataPlaneEndpoint : IAsyncDisposable
{
    private readonly QuicEndpoint _quic;
    private readonly StunDiscovery _stun;
    private readonly IceAgent _ice;
    private volatile IReadOnlyList<RelayInfo> _relays = [];
    private Task? _networkWatch;
    private readonly ConcurrentDictionary<string, RelayQuicPath> _relayPaths = new(StringComparer.Ordinal);
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private readonly SemaphoreSlim _relayLock = new(1, 1);
    private RelayPool? _pool;
    // Completes with the first relay list: a ticket that arrives before it waits instead of failing.
    private readonly TaskCompletionSource _relaysKnown = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private string _relayKey = "";
    private Task? _pump;

    private readonly bool _accepts;

    private DataPlaneEndpoint(QuicEndpoint quic, X509Certificate2 certificate, X509Certificate2 ca, bool accepts, ILogger logger)
    {
        _accepts = accepts;
        _quic = quic;
        _logger = logger;
        Certificate = certificate;
        Ca = ca;
        _stun = new StunDiscovery((datagram, destination, ct) => new ValueTask(_quic.SendNonQuicAsync(datagram, destination, ct)));
        _ice = new IceAgent(!accepts, (datagram, destination, ct) => new ValueTask(_quic.SendNonQuicAsync(datagram, destination, ct)), SendRelayedAsync, GatherAsync, logger)
        {
            Rediscover = ct => DiscoverAsync(_relays, ct),
        };
        _quic.SetNonQuicPacketHandler((packet, from) =>
        {
            if (!_stun.TryHandle(packet, from))
            {
                _ice.TryHandleStun(packet.Span, from, relayPeer: null);
            }
        });
        // Both ends notice a new address; the client also searches for direct paths again from it.
        _networkWatch = Task.Run(() => WatchNetworkAsync(_stop.Token), CancellationToken.None);
    }

    public X509Certificate2 Certificate { get; private set; }
    public X509Certificate2 Ca { get; }
    public IPEndPoint LocalEndPoint => _quic.LocalEndPoint;

    /// <summary>Binds the UDP socket; a connector passes <paramref name="acceptConnections"/> so clients' connections arrive in <see cref="AcceptAsync"/>.</summary>
    public static DataPlaneEndpoint Create(IPEndPoint bind, X509Certificate2 certificate, X509Certificate2 ca, bool acceptConnections, ILogger logger)
    {
        if (!QuicSupport.IsSupported)
        {
            throw new InvalidOperationException(QuicSupport.NotSupportedReason);
        }
        var quic = QuicEndpoint.Bind(new QuicEndpointOptions
        {
            LocalEndPoint = bind,
            ServerTls = acceptConnections ? new QuicTlsOptions { Certificate = certificate, TrustedCa = ca } : null,
            ServerConnectionOptions = ConnectionOptions,
            Logger = logger,
        });
        return new DataPlaneEndpoint(quic, certificate, ca, acceptConnections, logger);
    }

    /// <summary>Flows are many and long-lived; keepalives hold NAT mappings and relay bindings open.</summary>
    public static QuicConnectionOptions ConnectionOptions { get; } = new()
    {
        IdleTimeout = TimeSpan.FromSeconds(60),
        KeepAliveInterval = TimeSpan.FromSeconds(10),
        MaxInboundBidirectionalStreams = 10_000,
        StreamReceiveWindow = 4 << 20,
        ConnectionReceiveWindow = 32 << 20,
        // Real paths lose packets; BBR keeps its rate where Cubic collapses (5 % loss at 100 ms RTT: ~18x the throughput here).
        CongestionControl = QuicCongestionControl.Bbr,
        // UDP flows ride DATAGRAM frames (RFC 9221): advertising max_datagram_frame_size lets the peer send them on any path, relayed
        // included; the path MTU, not this limit, decides what fits, and larger payloads take the flow's stream.
        MaxDatagramFrameSize = 65535,
        DatagramReceiveQueueLength = 4096,
    };

    /// <summary>Switches to a renewed certificate: new QUIC handshakes and new relay links use it; what is up keeps running.</summary>
    public async Task UpdateCertificateAsync(X509Certificate2 certificate, IReadOnlyList<RelayInfo> relays, CancellationToken ct)
    {
        Certificate = certificate;
        if (_accepts)
        {
            _quic.UpdateServerTls(new QuicTlsOptions { Certificate = certificate, TrustedCa = Ca });
        }
        // Relay links authenticate with the certificate they were opened with: reconnect them with the new one.
        await ReconnectRelaysAsync(relays, ct);
    }

    /// <summary>Makes new relay links even though the list did not change, carrying the bound tickets over.</summary>
    private async Task ReconnectRelaysAsync(IReadOnlyList<RelayInfo> relays, CancellationToken ct)
    {
        await _relayLock.WaitAsync(ct);
        try
        {
            _relayKey = "";
        }
        finally
        {
            _relayLock.Release();
        }
        await UpdateRelaysAsync(relays, ct);
    }

    /// <summary>Asks every relay's STUN server for this socket's public address.</summary>
    public Task<StunReportMessage> DiscoverAsync(IReadOnlyList<RelayInfo> relays, CancellationToken ct) => _stun.RunAsync(relays, ct);

    /// <summary>The latest STUN discovery's report (it is run again after a network change).</summary>
    public StunReportMessage? LastStun => _stun.Last.Report;

    /// <summary>The relays this socket holds an open link to now.</summary>
    public IReadOnlyList<string> ConnectedRelays => _pool?.ConnectedRelays ?? [];

    /// <summary>Called with the STUN report made after a network change (the connector tells the controller).</summary>
    public Func<StunReportMessage, CancellationToken, Task>? Rediscovered { get; set; }

    /// <summary>Where the client's direct-path offers go: its controller session.</summary>
    public SignalAsync? Signal
    {
        get => _ice.Signal;
        set => _ice.Signal = value;
    }

    /// <summary>Signaling from a peer (through the controller); the connector answers through <paramref name="reply"/>.</summary>
    public Task HandleSignalAsync(CandidatesMessage message, SignalAsync reply, CancellationToken ct) => _ice.HandleSignalAsync(message, reply, ct);

    /// <summary>The controller could not pass this client's offer to <paramref name="peer"/>.</summary>
    public void SignalingRefused(string peer, string reason) => _ice.SignalingRefused(peer, reason);

    /// <summary>
    /// Client: starts the search for a direct path to <paramref name="connector"/> for a connection made over the relay, and the
    /// selector that moves the connection between the two. <paramref name="firstFlow"/> (a <see cref="Stopwatch"/> timestamp)
    /// is when the first flow asked for the connection, for the time-to-direct figure.
    /// </summary>
    /// <summary>Whether the client looks for direct paths; off keeps every connection relayed (for UDP-hostile networks, and for measuring the relay).</summary>
    public bool DirectPaths
    {
        get => _ice.DirectPaths;
        set => _ice.DirectPaths = value;
    }

    public PathSelector SelectPaths(string connector, QuicConnection connection, long firstFlow)
    {
        var session = _ice.Start(connector);
        return new PathSelector(connector, connection, RelayPathTo(connector), session, _ice, _quic, () => _pool?.RelayFor(connector), LocalFailure, firstFlow, _logger);
    }

    /// <summary>What this end's STUN discovery says about its chances of a direct path, if anything.</summary>
    private string? LocalFailure()
    {
        var last = _stun.Last;
        return last.Report switch
        {
            { Status: "failed" } report => $"this device's STUN queries to the relays got no answer ({report.Error}): outbound UDP looks blocked here",
            _ when last.Mapped.Count > 1 => $"this device's NAT maps per destination ({string.Join(", ", last.Mapped)}), which only a peer with a public address can reach",
            _ => null,
        };
    }

    /// <summary>This end's candidates: an address per interface (on the socket's port), then what STUN learned (waited for briefly).</summary>
    private async Task<IReadOnlyList<Candidate>> GatherAsync(CancellationToken ct)
    {
        var port = LocalEndPoint.Port;
        var candidates = new List<Candidate>();
        var preference = 65535;
        foreach (var address in HostAddresses(LocalEndPoint.Address))
        {
            candidates.Add(new Candidate(CandidateKind.Host, new IPEndPoint(address, port), Candidate.PriorityOf(CandidateKind.Host, preference--)));
        }
        using var wait = CancellationTokenSource.CreateLinkedTokenSource(ct);
        wait.CancelAfter(TimeSpan.FromSeconds(3));
        try
        {
            await _stun.WaitAsync(wait.Token);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            // No STUN answer yet: offer the host addresses now; a later offer carries the rest.
        }
        preference = 65535;
        foreach (var mapped in _stun.Last.Mapped)
        {
            if (!candidates.Any(c => c.EndPoint.Equals(mapped)))
            {
                candidates.Add(new Candidate(CandidateKind.ServerReflexive, mapped, Candidate.PriorityOf(CandidateKind.ServerReflexive, preference--)));
            }
        }
        return candidates;
    }

    /// <summary>The IPv4 addresses of the interfaces that are up, loopback and link-local left out (RFC 8445 §5.1.1.1).</summary>
    private static List<IPAddress> HostAddresses(IPAddress bound)
    {
        if (!bound.Equals(IPAddress.Any))
        {
            return [bound];
        }
        try
        {
            return [.. NetworkInterface.GetAllNetworkInterfaces()
                .Where(n => n.OperationalStatus is OperationalStatus.Up or OperationalStatus.Unknown && n.NetworkInterfaceType != NetworkInterfaceType.Loopback)
                .SelectMany(n => n.GetIPProperties().UnicastAddresses)
                .Select(u => u.Address)
                .Where(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a) && !(a.GetAddressBytes() is [169, 254, ..]))
                .Distinct()];
        }
        catch (NetworkInformationException)
        {
            return [];
        }
    }

    /// <summary>
    /// Watches the host's addresses: the kernel's address-change notifications wake it at once, and a check every 10 s covers
    /// systems that send none. When they change (a new network, a DHCP renewal), the relay links are made again from the new
    /// address, STUN runs again, and the client re-offers its candidates so every search starts over.
    /// </summary>
    private async Task WatchNetworkAsync(CancellationToken ct)
    {
        var known = string.Join(",", HostAddresses(LocalEndPoint.Address));
        var changed = new SemaphoreSlim(0);
        void OnChange(object? sender, EventArgs e)
        {
            if (changed.CurrentCount == 0)
            {
                changed.Release();
            }
        }
        NetworkChange.NetworkAddressChanged += OnChange;
        try
        {
            while (!ct.IsCancellationRequested)
            {
                if (await changed.WaitAsync(TimeSpan.FromSeconds(10), ct))
                {
                    // Changes come in bursts (address removed, route replaced, address added): look once they settle.
                    await Task.Delay(TimeSpan.FromMilliseconds(200), ct);
                    while (changed.CurrentCount > 0)
                    {
                        await changed.WaitAsync(ct);
                    }
                }
                var now = string.Join(",", HostAddresses(LocalEndPoint.Address));
                if (now == known)
                {
                    continue;
                }
                LogNetworkChanged(_logger, known, now);
                known = now;
                _stun.Invalidate();
                var relays = _relays;
                // Links made from the old address may be dead without knowing it yet.
                await ReconnectRelaysAsync(relays, ct);
                _ice.Restart();
                var report = await DiscoverAsync(relays, ct);
                LogRediscovered(_logger, report.Status, report.MappedAddress ?? "-");
                if (Rediscovered is { } rediscovered)
                {
                    await rediscovered(report, ct);
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
        {
        }
        finally
        {
            NetworkChange.NetworkAddressChanged -= OnChange;
            changed.Dispose();
        }
    }

    private async ValueTask SendRelayedAsync(string peer, ReadOnlyMemory<byte> packet, CancellationToken ct)
    {
        if (_pool is { } pool)
        {
            await pool.SendAsync(peer, packet, ct);
        }
    }

    /// <summary>Connects to the relays in the list (again only when the list changed).</summary>
    public async Task UpdateRelaysAsync(IReadOnlyList<RelayInfo> relays, CancellationToken ct)
    {
        _relays = relays;
        var endpoints = relays.SelectMany(r => r.Tcp).Select(ParseEndpoint).OfType<RelayEndpoint>().ToArray();
        var key = string.Join(",", endpoints.Select(e => e.ToString()));
        await _relayLock.WaitAsync(ct);
        try
        {
            if (key == _relayKey)
            {
                return;
            }
            _relayKey = key;
            var old = _pool;
            var tickets = old?.Tickets ?? [];
            _pool = endpoints.Length == 0 ? null : new RelayPool(new RelayPoolOptions { Relays = endpoints, Link = new RelayLinkOptions { ClientCertificate = Certificate, CaCertificate = Ca } }, _logger);
            if (_pool is not null)
            {
                // The pool keeps tickets bound before its links are up and binds them as each link opens.
                _relaysKnown.TrySetResult();
                await _pool.StartAsync(ct);
                foreach (var ticket in tickets)
                {
                    await BindOnPoolAsync(_pool, ticket, ct);
                }
                var pool = _pool;
                _pump = Task.Run(() => PumpAsync(pool, _stop.Token), CancellationToken.None);
            }
            if (old is not null)
            {
                await old.DisposeAsync();
            }
            LogRelays(_logger, endpoints.Length, key);
        }
        finally
        {
            _relayLock.Release();
        }
    }

    /// <summary>
    /// Presents a ticket (naming this peer and another) to every relay, so packets between the two are forwarded.
    /// Before the first relay list arrives it waits for it, bounded by <paramref name="ct"/>.
    /// </summary>
    public async Task BindTicketAsync(string ticket, CancellationToken ct)
    {
        await _relaysKnown.Task.WaitAsync(ct);
        var pool = _pool ?? throw new InvalidOperationException("the controller lists no relay");
        await BindOnPoolAsync(pool, ticket, ct);
    }

    private async Task BindOnPoolAsync(RelayPool pool, string ticket, CancellationToken ct)
    {
        try
        {
            await pool.BindAsync(ticket, ct);
        }
        catch (RelayException e)
        {
            LogBindRefused(_logger, e.Reason.ToString(), e.Message);
            throw;
        }
    }

    private static readonly TimeSpan PeerPresenceWait = TimeSpan.FromSeconds(2);

    // Packets from the relays handed to QUIC before its connections answer: as many as a recvmmsg batch on the socket.
    private const int MaxRelayBatch = 64;

    /// <summary>Opens a QUIC connection to <paramref name="peer"/> over the relays (a ticket for the pair must be bound first).</summary>
    public async Task<QuicConnection> ConnectRelayedAsync(string peer, CancellationToken ct)
    {
        // The relay drops what comes before the other end has bound the ticket too, and a lost first Initial costs a whole
        // probe timeout (about 1 s); the relay announces the other end's arrival, so wait for that, briefly.
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (_pool is { } pool && !pool.IsPeerPresent(peer) && waited.Elapsed < PeerPresenceWait)
        {
            await Task.Delay(10, ct);
        }
        var path = RelayPathTo(peer);
        return await _quic.ConnectAsync(path, new QuicTlsOptions { Certificate = Certificate, TrustedCa = Ca }, ConnectionOptions, ct);
    }

    public ValueTask<QuicConnection> AcceptAsync(CancellationToken ct) => _quic.AcceptConnectionAsync(ct);

    private RelayQuicPath RelayPathTo(string peer)
        => _relayPaths.GetOrAdd(peer, p => _quic.CreateRelayPath(async (datagram, ct) =>
        {
            if (_pool is { } pool)
            {
                // Like UDP: a packet the relay cannot take now is lost, and QUIC recovers it.
                await pool.SendAsync(p, datagram, ct);
            }
        }));

    /// <summary>Hands packets arriving from the relays to the relayed path of the peer that sent them.</summary>
    private async Task PumpAsync(RelayPool pool, CancellationToken ct)
    {
        try
        {
            while (await pool.Packets.WaitToReadAsync(ct))
            {
                DeliverQueued(pool.Packets);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or System.Threading.Channels.ChannelClosedException)
        {
            // The pool was replaced or the endpoint is closing.
        }
    }

    /// <summary>
    /// Hands what the relays have queued to QUIC as one batch, so a connection acknowledges and answers once per batch rather than
    /// once per packet: on the relayed path every answer is another frame through two TLS links and the relay.
    /// </summary>
    private void DeliverQueued(System.Threading.Channels.ChannelReader<RelayPacket> packets)
    {
        using var batch = _quic.BeginRelayDelivery();
        for (var i = 0; i < MaxRelayBatch && packets.TryRead(out var packet); i++)
        {
            var span = packet.Packet.Span;
            // Connectivity checks probe the relayed path too; a STUN message carries the magic cookie a QUIC packet almost never has there.
            if (Ferry.Stun.StunPacket.IsStun(span) && _ice.TryHandleStun(span, null, packet.FromPeer))
            {
                continue;
            }
            batch.Deliver(RelayPathTo(packet.FromPeer), span);
        }
    }

    private static RelayEndpoint? ParseEndpoint(string text)
    {
        var colon = text.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(text[(colon + 1)..], System.Globalization.CultureInfo.InvariantCulture, out var port))
        {
            return null;
        }
        return new RelayEndpoint(text[..colon].Trim('[', ']'), port);
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        if (_pool is not null)
        {
            await _pool.DisposeAsync();
        }
        if (_pump is not null)
        {
            await _pump.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
        if (_networkWatch is not null)
        {
            await _networkWatch.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
        await _ice.DisposeAsync();
        await _quic.DisposeAsync();
        _stun.Dispose();
        _stop.Dispose();
    }

    [LoggerMessage(500, LogLevel.Information, "Relays in use: {Count} ({Endpoints})")]
    private static partial void LogRelays(ILogger logger, int count, string endpoints);

    [LoggerMessage(502, LogLevel.Information, "Network changed: host addresses {Before} -> {After}; reconnecting relays and searching for direct paths again")]
    private static partial void LogNetworkChanged(ILogger logger, string before, string after);

    [LoggerMessage(503, LogLevel.Information, "STUN after the network change: {Status}, mapped address {Mapped}")]
    private static partial void LogRediscovered(ILogger logger, string status, string mapped);

    [LoggerMessage(501, LogLevel.Warning, "Relay refused a ticket ({Reason}): {Message}")]
    private static partial void LogBindRefused(ILogger logger, string reason, string message);
}

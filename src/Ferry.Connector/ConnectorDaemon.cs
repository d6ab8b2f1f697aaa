using System.Security.Cryptography.X509Certificates;
using Ferry.Connector.Flows;
using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;
using Ferry.Core.Security;
using Ferry.Paths;
using Ferry.Quic;
using Microsoft.Extensions.Logging;

namespace Ferry.Connector;

/// <summary>
/// The connector process: dials out to the controller only, keeps its tokens rotated on disk, and serves clients' QUIC
/// connections (arriving through relays) by checking each flow against the access table the controller pushes.
/// </summary>
public sealed class ConnectorDaemon(ConnectorOptions options, ILoggerFactory loggers)
{
    private static readonly TimeSpan TicketBindTimeout = TimeSpan.FromSeconds(30);
    // Resources are checked this often, and soon after the access table changes.
    private static readonly TimeSpan ResourceCheckInterval = TimeSpan.FromSeconds(60);
    // A status the controller already has is sent again this often anyway, with the current flow count.
    private static readonly TimeSpan StatusRefresh = TimeSpan.FromSeconds(30);
    // QUIC application close code telling the client its device was removed.
    private const long DeviceRevokedCode = 3;
    private readonly ILogger _logger = loggers.CreateLogger<ConnectorDaemon>();
    private volatile AccessTable _access = AccessTable.Empty;
    private DataPlaneEndpoint? _dataPlane;
    private RelayInfo[] _relays = [];
    private readonly System.Collections.Concurrent.ConcurrentDictionary<LiveFlow, byte> _live = new();
    // Client connections by device identity, so a removed device's connection can be closed at once.
    private readonly System.Collections.Concurrent.ConcurrentDictionary<QuicConnection, string> _connections = new();
    private volatile IReadOnlySet<string> _revokedDevices = new HashSet<string>(StringComparer.Ordinal);
    private volatile ResourceGrant[] _resources = [];
    private volatile ResourceCheck[] _checks = [];
    private readonly SemaphoreSlim _accessChanged = new(0, 1);
    // Devices whose flows carried bytes since the last activity report (networks requiring a second factor lapse it without).
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, byte> _active = new(StringComparer.Ordinal);
    // How often, at most, the controller hears which devices had traffic; well under any network's inactivity threshold.
    private static readonly TimeSpan ActivityReportInterval = TimeSpan.FromSeconds(1);

    /// <summary>A flow in progress: whose it is, where it goes (once admitted), and how to end it.</summary>
    private sealed class LiveFlow(string owner, string device, CancellationTokenSource cancel)
    {
        public string Owner { get; } = owner;

        public string Device { get; } = device;

        /// <summary>Whom the table grants: the device itself where a second factor is required (it holds one or not), else its owner.</summary>
        public string GranteeIn(AccessTable table) => table.RequiresSecondFactor ? Device : Owner;
        public CancellationTokenSource Cancel { get; } = cancel;
        public volatile FlowHeader? Header;

        /// <summary>The address a name flow was dialled at, so revocation re-checks what the name led to, not only the name.</summary>
        public volatile System.Net.IPAddress? Dialled;
    }

    public async Task RunAsync(CancellationToken ct)
    {
        var clock = options.ClockSkew == TimeSpan.Zero ? TimeProvider.System : new SkewedTimeProvider(options.ClockSkew);
        var loop = new DaemonSessionLoop(options.Controller, options.Trust, options.TokensPath, clock, _logger);
        Log.Starting(_logger, loop.Tokens.Name ?? "?", loop.Tokens.Id, options.Controller, options.Trust.Description);
        ConnectorMetrics.ObserveActiveFlows(() => _live.Count);
        await using var control = options.StateDirectory is null ? null
            : await Core.Operations.LocalControl.StartAsync(options.StateDirectory, "connector", () => Status(loop), _logger, ct);
        await using var ops = options.MetricsListen is null ? null
            : await Core.Operations.OpsServer.StartAsync(options.MetricsListen, [ConnectorMetrics.MeterName],
                new Core.Operations.DelegateReadiness(() => loop.ConnectedSince is null ? $"no session with the controller ({loop.LastError?.Error ?? "connecting"})" : null), _logger, ct);
        var resolver = new NetworkNameResolver(options.DnsServer);
        var flows = new FlowHandler(resolver, new FlowHandlerOptions(), loggers.CreateLogger<FlowHandler>());
        CancellationTokenSource? discovery = null;
        SessionSocket? current = null;
        loop.OnWelcome = (_, socket, _) =>
        {
            current = socket;
            return Task.CompletedTask;
        };
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var checks = Task.Run(() => CheckResourcesAsync(new Health.ResourceChecker(resolver, TimeSpan.FromSeconds(3)), stop.Token), CancellationToken.None);
        var reports = Task.Run(() => ReportStatusAsync(() => current, stop.Token), CancellationToken.None);
        var activity = Task.Run(() => ReportActivityAsync(() => current, stop.Token), CancellationToken.None);
        loop.OnMessage = async (message, socket, sct) =>
        {
            current = socket;
            switch (message)
            {
                case CertificateIssuedMessage issued when _dataPlane is null:
                    Log.CertificateReceived(_logger, issued.NotAfter);
                    // The data plane needs this connector's certificate: it starts with the first one.
                    _dataPlane = DataPlaneEndpoint.Create(options.UdpBind, loop.Session.Certificate!, X509Certificate2.CreateFromPem(issued.CaPem), acceptConnections: true, _logger);
                    Log.DataPlane(_logger, _dataPlane.LocalEndPoint.ToString());
                    // After a network change the controller shows the new public address, as after a relay list change.
                    _dataPlane.Rediscovered = async (report, rct) =>
                    {
                        Log.StunResult(_logger, report.Status, report.MappedAddress ?? "-", string.Join(",", report.Relays), report.Error ?? "");
                        try
                        {
                            if (current is { } session)
                            {
                                await session.SendAsync(report, rct);
                            }
                        }
                        catch (Exception e) when (e is System.Net.WebSockets.WebSocketException or ObjectDisposedException or IOException)
                        {
                            // Between sessions: the next relay list runs STUN again and reports.
                        }
                    };
                    _ = Task.Run(() => AcceptLoopAsync(_dataPlane, flows, ct), CancellationToken.None);
                    ApplyRelays(socket, sct);
                    break;
                case CertificateIssuedMessage issued:
                    Log.CertificateReceived(_logger, issued.NotAfter);
                    await _dataPlane.UpdateCertificateAsync(loop.Session.Certificate!, _relays, sct);
                    break;
                case AccessMessage access:
                    _access = ToTable(access);
                    _resources = access.Resources;
                    if (_accessChanged.CurrentCount == 0)
                    {
                        try
                        {
                            _accessChanged.Release();
                        }
                        catch (SemaphoreFullException)
                        {
                            // Already signalled: one check covers both changes.
                        }
                    }
                    _revokedDevices = new HashSet<string>(access.RevokedDevices ?? [], StringComparer.Ordinal);
                    Log.AccessChanged(_logger, access.Resources.Length, access.Grants.Length);
                    ApplyNetworkSettings(access.Network, resolver);
                    RevokeWhatIsNoLongerAllowed();
                    break;
                case CandidatesMessage candidates when _dataPlane is { } plane:
                    // A client searching for a direct path: answer with this connector's candidates and check back.
                    _ = plane.HandleSignalAsync(candidates, (answer, ct) => socket.SendAsync(answer, ct), sct);
                    break;
                case TicketIssuedMessage ticket when _dataPlane is { } plane:
                    // Off the message loop: a ticket that comes before the relay list waits for it, and the list comes through this loop.
                    _ = Task.Run(() => BindTicketAsync(plane, ticket, sct), CancellationToken.None);
                    break;
                case RelaysMessage relays when relays.Relays.Length > 0:
                    _relays = relays.Relays;
                    if (discovery is not null)
                    {
                        await discovery.CancelAsync();
                        discovery.Dispose();
                    }
                    discovery = CancellationTokenSource.CreateLinkedTokenSource(sct);
                    ApplyRelays(socket, discovery.Token);
                    break;
            }
        };
        try
        {
            await loop.RunAsync(ct);
        }
        finally
        {
            await stop.CancelAsync();
            await Task.WhenAll(checks, reports, activity).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            if (_dataPlane is not null)
            {
                await _dataPlane.DisposeAsync();
            }
        }
    }

    private Core.Operations.DaemonStatus Status(DaemonSessionLoop loop)
        => loop.Status([.. _dataPlane?.ConnectedRelays ?? []], _live.Count, _dataPlane is { } plane ? [$"udp {plane.LocalEndPoint}"] : [], null);

    /// <summary>
    /// Checks the network's resources from here every minute and soon after the access table changes: connectors of one
    /// network are meant to be interchangeable, and the controller flags a resource some of them cannot resolve or reach.
    /// </summary>
    private async Task CheckResourcesAsync(Health.ResourceChecker checker, CancellationToken ct)
    {
        try
        {
            while (!ct.IsCancellationRequested)
            {
                await _accessChanged.WaitAsync(ResourceCheckInterval, ct);
                var resources = _resources;
                var before = _checks.ToDictionary(c => c.ResourceId, StringComparer.Ordinal);
                var now = await checker.CheckAsync(resources, ct);
                foreach (var (resource, check) in resources.Zip(now))
                {
                    var was = before.GetValueOrDefault(resource.Id)?.Status;
                    if (check.Status is "unresolvable" or "unreachable" && was != check.Status)
                    {
                        Log.ResourceProblem(_logger, resource.Name, check.Status, check.Detail ?? "");
                    }
                    else if (check.Status == "ok" && was is "unresolvable" or "unreachable")
                    {
                        Log.ResourceRecovered(_logger, resource.Name);
                    }
                }
                _checks = now;
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>
    /// Tells the controller how many clients this connector serves (clients spread by it) and what the resource checks found:
    /// at once when either changes, on every new session, and every <see cref="StatusRefresh"/> anyway.
    /// </summary>
    private async Task ReportStatusAsync(Func<SessionSocket?> session, CancellationToken ct)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromMilliseconds(250));
        ConnectorStatusMessage? sent = null;
        SessionSocket? sentOn = null;
        var sentAt = DateTimeOffset.MinValue;
        try
        {
            while (await timer.WaitForNextTickAsync(ct))
            {
                if (session() is not { } socket)
                {
                    continue;
                }
                var status = new ConnectorStatusMessage(_connections.Count, _live.Count, _checks);
                if (socket == sentOn && sent is not null && sent.Clients == status.Clients && sent.Resources.SequenceEqual(status.Resources)
                    && DateTimeOffset.UtcNow - sentAt < StatusRefresh)
                {
                    continue;
                }
                try
                {
                    await socket.SendAsync(status, ct);
                    (sent, sentOn, sentAt) = (status, socket, DateTimeOffset.UtcNow);
                }
                catch (Exception e) when (e is System.Net.WebSockets.WebSocketException or ObjectDisposedException or IOException or InvalidOperationException)
                {
                    // Between sessions: the next one gets the status when it starts.
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    // Lock-free in the common case: every read and write of a flow lands here.
    private void MarkActive(string device)
    {
        if (!_active.ContainsKey(device))
        {
            _active.TryAdd(device, 0);
        }
    }

    /// <summary>
    /// Tells the controller, at most every <see cref="ActivityReportInterval"/>, which devices had traffic, while the network
    /// requires a second factor: the controller ends a device's second factor after the network's threshold without any.
    /// </summary>
    private async Task ReportActivityAsync(Func<SessionSocket?> session, CancellationToken ct)
    {
        using var timer = new PeriodicTimer(ActivityReportInterval);
        var datagramsSeen = new Dictionary<QuicConnection, long>();
        try
        {
            while (await timer.WaitForNextTickAsync(ct))
            {
                // UDP payloads ride datagrams, not the flow stream: a connection whose datagram count moved had UDP traffic.
                foreach (var (connection, device) in _connections)
                {
                    var carried = QuicUdpDatagrams.For(connection).Carried;
                    if (carried != datagramsSeen.GetValueOrDefault(connection))
                    {
                        _active.TryAdd(device, 0);
                    }
                    datagramsSeen[connection] = carried;
                }
                foreach (var gone in datagramsSeen.Keys.Where(c => !_connections.ContainsKey(c)).ToArray())
                {
                    datagramsSeen.Remove(gone);
                }
                if (_active.IsEmpty || !_access.RequiresSecondFactor || session() is not { } socket)
                {
                    _active.Clear();
                    continue;
                }
                var devices = _active.Keys.ToArray();
                foreach (var device in devices)
                {
                    _active.TryRemove(device, out _);
                }
                try
                {
                    await socket.SendAsync(new ActivityMessage(devices), ct);
                }
                catch (Exception e) when (e is System.Net.WebSockets.WebSocketException or ObjectDisposedException or IOException or InvalidOperationException)
                {
                    // Between sessions: traffic goes on, and the next report names these devices again.
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>Connects to the relays and runs STUN against them from the data-plane socket; the controller shows the outcome as STUN status.</summary>
    private void ApplyRelays(SessionSocket socket, CancellationToken ct)
    {
        if (_dataPlane is not { } dataPlane || _relays.Length == 0)
        {
            return;
        }
        var relays = _relays;
        _ = Task.Run(async () =>
        {
            try
            {
                await dataPlane.UpdateRelaysAsync(relays, ct);
                var report = await dataPlane.DiscoverAsync(relays, ct);
                Log.StunResult(_logger, report.Status, report.MappedAddress ?? "-", string.Join(",", report.Relays), report.Error ?? "");
                await socket.SendAsync(report, ct);
            }
            catch (Exception e) when (e is OperationCanceledException or System.Net.WebSockets.WebSocketException or ObjectDisposedException or Ferry.Relay.RelayException)
            {
                // Superseded by a newer list, or the session ended: the next one starts over.
            }
        }, CancellationToken.None);
    }

    private async Task BindTicketAsync(DataPlaneEndpoint plane, TicketIssuedMessage ticket, CancellationToken ct)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TicketBindTimeout);
        try
        {
            await plane.BindTicketAsync(ticket.Ticket, timeout.Token);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            Log.TicketFailed(_logger, ticket.Peer, $"no relay list from the controller within {TicketBindTimeout.TotalSeconds:0} s");
        }
        catch (Exception e) when (e is Ferry.Relay.RelayException or InvalidOperationException or ObjectDisposedException)
        {
            Log.TicketFailed(_logger, ticket.Peer, e.Message);
        }
        catch (OperationCanceledException)
        {
            // The session ended; the client asks again on the next one.
        }
    }

    private NetworkSettings? _network;

    private void ApplyNetworkSettings(NetworkSettings? network, NetworkNameResolver resolver)
    {
        if (network is null || network == _network)
        {
            return;
        }
        _network = network;
        if (!resolver.UseNetworkServer(network.DnsServer, out var problem))
        {
            Log.NetworkSettingIgnored(_logger, problem);
        }
        var via = resolver.Server is { } server
            ? $"DNS server {server}{(options.DnsServer is not null ? " (--dns-server)" : "")}"
            : "the connector host's resolver";
        Log.NetworkSettings(_logger, network.Name, via, network.Exit ? "; exit network: public destinations allowed" : "");
    }

    /// <summary>
    /// Revocation reaches live flows: every flow is checked again against the new table, and closed when it no longer passes;
    /// a removed device loses its whole connection.
    /// </summary>
    private void RevokeWhatIsNoLongerAllowed()
    {
        var revoked = _revokedDevices;
        foreach (var (connection, identity) in _connections)
        {
            if (revoked.Contains(identity))
            {
                Log.DeviceRevoked(_logger, identity);
                _connections.TryRemove(connection, out _);
                _ = connection.CloseAsync(DeviceRevokedCode, "device removed").AsTask();
            }
        }
        var table = _access;
        foreach (var flow in _live.Keys)
        {
            if (flow.Header is { } header && Recheck(table, flow, header) is { IsAllowed: false } decision)
            {
                Log.FlowRevoked(_logger, flow.GranteeIn(table), header.ToString(), decision.Message);
                flow.Cancel.Cancel();
            }
        }
    }

    private static AccessDecision Recheck(AccessTable table, LiveFlow flow, FlowHeader header)
    {
        var grantee = flow.GranteeIn(table);
        var decision = table.Check(grantee, header.Protocol, header.Host, header.Port);
        // A name flow passed two checks when it opened: the name, and the address it resolved to (public or loopback ones need more).
        return decision.IsAllowed && flow.Dialled is { } address && !FlowHeader.TryGetAddress(header.Host, out _)
            ? table.CheckResolved(grantee, header.Protocol, decision.Resource!, header.Host, address, header.Port)
            : decision;
    }

    /// <summary>Every resource is in the table (so "not granted" is told apart from "no such resource"); owners are the users and service accounts granted each.</summary>
    private static AccessTable ToTable(AccessMessage access)
    {
        var byId = access.Resources.ToDictionary(r => r.Id, StringComparer.Ordinal);
        // An empty identity matches no certificate: it only makes ungranted resources known to the table.
        var entries = access.Resources.Select(r => new AccessEntry("", r))
            .Concat(access.Grants.SelectMany(g => g.ResourceIds.Where(byId.ContainsKey).Select(id => new AccessEntry(g.Owner, byId[id]))));
        // Only an exit network's connector reaches public addresses; without settings (an older controller) it does not.
        return new AccessTable(entries)
        {
            PublicDestinations = access.Network?.Exit ?? false,
            NetworkName = access.Network?.Name ?? "this network",
            RequiresSecondFactor = access.Network?.RequireMfa ?? false,
        };
    }

    private async Task AcceptLoopAsync(DataPlaneEndpoint dataPlane, FlowHandler flows, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            QuicConnection connection;
            try
            {
                connection = await dataPlane.AcceptAsync(ct);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            catch (Exception e) when (e is QuicException or System.Security.Authentication.AuthenticationException)
            {
                Log.HandshakeFailed(_logger, e.Message);
                continue;
            }
            _ = Task.Run(() => ServeAsync(connection, flows, ct), CancellationToken.None);
        }
    }

    /// <summary>One client connection: every stream is one flow, checked against the owner named in the client's certificate.</summary>
    private async Task ServeAsync(QuicConnection connection, FlowHandler flows, CancellationToken ct)
    {
        await using var owned = connection;
        var owner = connection.RemoteCertificate is { } certificate ? PeerIdentity.OwnerOf(certificate) : null;
        if (owner is null)
        {
            Log.HandshakeFailed(_logger, $"{connection.RemoteIdentity ?? "peer"} presented no device owner; only client devices open flows");
            await connection.CloseAsync(1, "not a client device");
            return;
        }
        var device = connection.RemoteIdentity ?? "?";
        if (_revokedDevices.Contains(device))
        {
            Log.HandshakeFailed(_logger, $"{device} was removed by an administrator");
            await connection.CloseAsync(DeviceRevokedCode, "device removed");
            return;
        }
        _connections[connection] = device;
        Log.ClientConnected(_logger, device, owner);
        // One datagram reader per connection routes UDP payloads to the connection's UDP flows (see UdpFlowFraming).
        var datagrams = QuicUdpDatagrams.For(connection);
        while (!ct.IsCancellationRequested)
        {
            QuicStream stream;
            try
            {
                stream = await connection.AcceptStreamAsync(ct);
            }
            catch (Exception e) when (e is QuicException or OperationCanceledException or ObjectDisposedException)
            {
                Log.ClientDisconnected(_logger, connection.RemoteIdentity ?? "?", e.Message);
                if (datagrams.UnknownDropped + datagrams.MalformedDropped > 0)
                {
                    Log.DatagramsDropped(_logger, connection.RemoteIdentity ?? "?", datagrams.UnknownDropped, datagrams.MalformedDropped);
                }
                _connections.TryRemove(connection, out _);
                return;
            }
            _ = Task.Run(async () =>
            {
                using var cancel = CancellationTokenSource.CreateLinkedTokenSource(ct);
                var flow = new LiveFlow(owner, device, cancel);
                _live[flow] = 0;
                try
                {
                    var table = _access;
                    await using var counted = new ActivityStream(stream, () => MarkActive(device));
                    await using (stream)
                    {
                        await flows.HandleAsync(counted, _ => { stream.CompleteWrites(); return ValueTask.CompletedTask; }, flow.GranteeIn(table), table, cancel.Token, header =>
                        {
                            flow.Header = header;
                            // The table may have changed while the header was read: the newest one decides.
                            var newest = _access;
                            if (!newest.Check(flow.GranteeIn(newest), header.Protocol, header.Host, header.Port).IsAllowed)
                            {
                                cancel.Cancel();
                            }
                        }, datagrams, stream.Id, address => flow.Dialled = address);
                    }
                }
                finally
                {
                    _live.TryRemove(flow, out _);
                }
            }, CancellationToken.None);
        }
    }
}

using System.Collections.Concurrent;
using Ferry.Client.Access;
using Ferry.Client.Routing;
using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;
using Ferry.Paths;
using Ferry.Quic;
using Microsoft.Extensions.Logging;

namespace Ferry.Client;

/// <summary>
/// Opens flows as QUIC streams: one connection per connector (relayed at first, with a ticket from the controller), one
/// stream per flow (UDP payloads ride the connection's datagrams). The <see cref="ConnectorSelector"/> says which of a
/// network's connectors to use; when one does not answer, the next is tried at once.
/// </summary>
/// <remarks>
/// <paramref name="session"/> gives the current controller session: connections outlive a reconnect to the controller, and
/// while it is away flows keep opening on the connections already held.
/// </remarks>
public sealed partial class QuicFlowOpener(Func<ControllerSessionClient?> session, Func<CancellationToken, Task<DataPlaneEndpoint>> dataPlane, ConnectorSelector selector, ILogger logger) : IFlowOpener, IAsyncDisposable
{
    /// <summary>The application error code of a flow stream given up on while it waited for its connector's reply.</summary>
    private const long AbandonedFlowCode = 0x10;

    private static readonly TimeSpan ReplyTimeout = TimeSpan.FromSeconds(20);
    // A connector that acknowledges nothing for this long (or a few round trips, if longer) is taken for dead.
    private static readonly TimeSpan Unresponsive = TimeSpan.FromSeconds(1);
    // Connecting gets less time while other connectors wait their turn, so a dead one costs little.
    private static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(20);
    private static readonly TimeSpan ConnectTimeoutWithAlternatives = TimeSpan.FromSeconds(5);
    private readonly ConcurrentDictionary<string, Lazy<Task<QuicConnection>>> _connections = new(StringComparer.Ordinal);
    // The network each connection serves, so a held connection can stand in while the controller is away.
    private readonly ConcurrentDictionary<string, string> _networkOf = new(StringComparer.Ordinal);
    // One path selector per connection: it moves the connection between the relayed path and a direct one.
    private readonly ConcurrentDictionary<QuicConnection, PathSelector> _selectors = new();
    private static readonly TimeSpan FirstListWait = TimeSpan.FromSeconds(10);
    private readonly TaskCompletionSource _firstList = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>The online connectors per network, as the controller last said.</summary>
    public void UpdateConnectors(NetworkConnectors[] connectors)
    {
        selector.Update(connectors);
        _firstList.TrySetResult();
    }

    /// <summary>The connector each network's flows go to now.</summary>
    public IReadOnlyList<NetworkRoute> Routes => selector.Routes();

    /// <summary>The path each open connection uses now: direct or relayed, round trips, bytes, and why not direct.</summary>
    public IReadOnlyList<PathStatus> Paths => [.. _selectors.Where(s => !s.Key.Closed.IsCompleted).Select(s => s.Value.Status()).OrderBy(p => p.Connector, StringComparer.Ordinal)];

    /// <summary>The connectors this client holds a connection to now.</summary>
    public IReadOnlyList<string> ConnectedTo => [.. _connections.Where(c => c.Value.IsValueCreated && c.Value.Value.IsCompletedSuccessfully && !c.Value.Value.Result.Closed.IsCompleted).Select(c => c.Key).Order(StringComparer.Ordinal)];

    public async Task<OpenedFlow> OpenAsync(ResourceGrant resource, FlowHeader header, EarlyApplicationData? early, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(resource);
        ArgumentNullException.ThrowIfNull(header);
        var flow = await OpenTcpAsync(resource, header, early, cancellationToken);
        ClientMetrics.Flow("tcp", flow.Reply.IsOk);
        return flow;
    }

    private Task<OpenedFlow> OpenTcpAsync(ResourceGrant resource, FlowHeader header, EarlyApplicationData? early, CancellationToken cancellationToken)
    {
        return OpenOnSomeConnectorAsync(resource, async (connection, watch, ct) =>
        {
            var stream = await connection.OpenBidirectionalStreamAsync(ct);
            try
            {
                await header.WriteAsync(stream, ct);
                FlowReply reply;
                if (early is null)
                {
                    reply = await AnswerAsync(connection, watch, FlowReply.ReadAsync(stream, ct).AsTask(), ct);
                }
                else
                {
                    // What the application sent already goes now, saving the round trip to the reply; refused, the connector drops it unread.
                    await early.AttachAsync(stream, ct);
                    var opened = false;
                    try
                    {
                        reply = await AnswerAsync(connection, watch, FlowReply.ReadAsync(stream, ct).AsTask(), ct);
                        opened = reply.IsOk;
                    }
                    finally
                    {
                        await early.DetachAsync(opened);
                    }
                }
                return new OpenedFlow(reply, stream, s =>
                {
                    ((QuicStream)s).CompleteWrites();
                    return ValueTask.CompletedTask;
                });
            }
            catch
            {
                // Abandoned for another connector: reset it, never end it gracefully. A FIN would tell a connector that was only
                // slow that the header and any early bytes are a whole request, and it would deliver them as well as the next one.
                stream.Abort(QuicAbortDirection.Both, AbandonedFlowCode);
                await stream.DisposeAsync();
                throw;
            }
        }, reason => OpenedFlow.Refused(FlowStatus.Unreachable, reason), cancellationToken);
    }

    /// <summary>
    /// Opens a UDP flow: a stream for its header, reply and lifetime, with payloads on the connection's datagrams (see
    /// <see cref="UdpFlowFraming"/>). Connector choice and tickets are those of TCP flows.
    /// </summary>
    public async Task<OpenedUdpFlow> OpenUdpAsync(ResourceGrant resource, FlowHeader header, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(resource);
        ArgumentNullException.ThrowIfNull(header);
        var flow = await OpenUdpOnSomeConnectorAsync(resource, header, cancellationToken);
        ClientMetrics.Flow("udp", flow.Reply.IsOk);
        return flow;
    }

    private Task<OpenedUdpFlow> OpenUdpOnSomeConnectorAsync(ResourceGrant resource, FlowHeader header, CancellationToken cancellationToken)
    {
        return OpenOnSomeConnectorAsync(resource, async (connection, watch, ct) =>
        {
            var datagrams = QuicUdpDatagrams.For(connection);
            var stream = await connection.OpenBidirectionalStreamAsync(ct);
            // The mux owns the stream from here: it disposes it on refusal or failure.
            var (reply, flow) = await AnswerAsync(connection, watch, datagrams.OpenAsync(stream.Id, stream, s =>
            {
                ((QuicStream)s).CompleteWrites();
                return ValueTask.CompletedTask;
            }, header, ct), ct);
            return new OpenedUdpFlow(reply, flow);
        }, reason => OpenedUdpFlow.Refused(FlowStatus.Unreachable, reason), cancellationToken);
    }

    /// <summary>Tries the network's connectors in the selector's order until one answers; they are interchangeable.</summary>
    private async Task<T> OpenOnSomeConnectorAsync<T>(ResourceGrant resource, Func<QuicConnection, AnswerWatch, CancellationToken, Task<T>> open, Func<string, T> refused, CancellationToken cancellationToken)
    {
        if (!_firstList.Task.IsCompleted)
        {
            // A flow can come before the session's first connector list; waiting a moment beats refusing it.
            await _firstList.Task.WaitAsync(FirstListWait, cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
        var candidates = selector.Candidates(resource.Network, HeldFor(resource.Network));
        if (candidates.Count == 0)
        {
            return refused($"no connector of network '{resource.Network}' is online");
        }
        var errors = new List<string>();
        for (var i = 0; i < candidates.Count; i++)
        {
            var connector = candidates[i];
            try
            {
                var connection = await ConnectionToAsync(connector, resource.Network, i < candidates.Count - 1 ? ConnectTimeoutWithAlternatives : ConnectTimeout, cancellationToken);
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                timeout.CancelAfter(ReplyTimeout);
                // A connector the controller lists now and drops while the flow waits has gone offline (often: was killed).
                var listed = selector.IsListed(resource.Network, connector);
                var watch = new AnswerWatch(() => listed && !selector.IsListed(resource.Network, connector), HasAlternative: i < candidates.Count - 1);
                var opened = await open(connection, watch, timeout.Token);
                selector.Succeeded(resource.Network, connector);
                if (i > 0)
                {
                    ClientMetrics.Failover();
                }
                return opened;
            }
            catch (Exception e) when (!cancellationToken.IsCancellationRequested && e is QuicException or InvalidOperationException or Ferry.Relay.RelayException or TimeoutException
                or System.Security.Authentication.AuthenticationException or OperationCanceledException or FlowProtocolException or IOException)
            {
                selector.Failed(resource.Network, connector);
                errors.Add($"{connector}: {e.Message}");
                LogConnectFailed(logger, connector, e.Message);
            }
        }
        return refused($"no connector of network '{resource.Network}' answered: {string.Join("; ", errors)}");
    }

    /// <summary>
    /// Waits for the connector's answer to a flow, but only while the connection shows the connector alive: a killed or cut-off
    /// connector acknowledges nothing, and waiting the whole reply timeout for it would stall every flow behind it.
    /// </summary>
    /// <remarks>
    /// The silence rule applies only when another connector is left to try. For the last one it would turn a connector that is
    /// merely slow (busy with thousands of flows, or starved of CPU) into a failed flow while gaining nothing; its flows wait for
    /// the reply timeout instead, or until the controller reports it offline (<see cref="AnswerWatch.Gone"/>), which is quicker still.
    /// </remarks>
    private static async Task<T> AnswerAsync<T>(QuicConnection connection, AnswerWatch watch, Task<T> answer, CancellationToken ct)
    {
        var asked = System.Diagnostics.Stopwatch.GetTimestamp();
        while (true)
        {
            var stats = connection.GetStatistics();
            var limit = Unresponsive + (stats.SmoothedRtt * 3) + (stats.RttVariance * 4);
            string? giveUp = null;
            if (watch.HasAlternative && System.Diagnostics.Stopwatch.GetElapsedTime(asked) > limit && connection.SinceLastReceived > limit)
            {
                giveUp = $"the connector acknowledged nothing for {connection.SinceLastReceived.TotalSeconds:0.0} s";
            }
            else if (watch.Gone())
            {
                giveUp = "the controller reports the connector offline, and it has not answered";
            }
            if (giveUp is not null)
            {
                // The abandoned answer ends when its stream or connection does; its failure then is expected, not news.
                _ = answer.ContinueWith(static t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
                throw new TimeoutException(giveUp);
            }
            if (await Task.WhenAny(answer, Task.Delay(50, ct)) == answer)
            {
                return await answer;
            }
            ct.ThrowIfCancellationRequested();
        }
    }

    /// <summary>Connectors of <paramref name="network"/> this client holds a live connection to.</summary>
    private IEnumerable<string> HeldFor(string network)
        => ConnectedTo.Where(c => _networkOf.GetValueOrDefault(c) == network);

    private async Task<QuicConnection> ConnectionToAsync(string connector, string network, TimeSpan connectTimeout, CancellationToken ct)
    {
        var lazy = _connections.GetOrAdd(connector, c => new Lazy<Task<QuicConnection>>(() => ConnectAsync(c, connectTimeout)));
        var connection = await lazy.Value.WaitAsync(ct);
        if (connection.Closed.IsCompleted)
        {
            Forget(connector);
            lazy = _connections.GetOrAdd(connector, c => new Lazy<Task<QuicConnection>>(() => ConnectAsync(c, connectTimeout)));
            connection = await lazy.Value.WaitAsync(ct);
        }
        _networkOf[connector] = network;
        return connection;
    }

    private async Task<QuicConnection> ConnectAsync(string connector, TimeSpan connectTimeout)
    {
        try
        {
            return await ConnectOnceAsync(connector, connectTimeout);
        }
        catch
        {
            // A failed attempt must not stay cached: the next flow tries afresh.
            Forget(connector);
            throw;
        }
    }

    private async Task<QuicConnection> ConnectOnceAsync(string connector, TimeSpan connectTimeout)
    {
        long firstFlow = System.Diagnostics.Stopwatch.GetTimestamp();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        DataPlaneEndpoint plane;
        try
        {
            plane = await dataPlane(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            throw new InvalidOperationException("the data plane is not ready: the controller has not issued this device's certificate within 30 s");
        }
        timeout.CancelAfter(connectTimeout);
        // The relay forwards only for a pair the controller allowed; the controller hands the same ticket to the connector.
        var controller = session() ?? throw new InvalidOperationException("no session with the controller right now, and no connection to this connector yet");
        try
        {
            var ticket = await controller.RequestTicketAsync(connector, timeout.Token);
            await plane.BindTicketAsync(ticket.Ticket, timeout.Token);
            var handshake = System.Diagnostics.Stopwatch.GetTimestamp();
            QuicConnection connection;
            try
            {
                connection = await plane.ConnectRelayedAsync(connector, timeout.Token);
            }
            catch
            {
                ClientMetrics.Handshake(ok: false, System.Diagnostics.Stopwatch.GetElapsedTime(handshake));
                throw;
            }
            ClientMetrics.Handshake(ok: true, System.Diagnostics.Stopwatch.GetElapsedTime(handshake));
            LogConnected(logger, connector, "relayed");
            // Traffic starts on the relay at once; the search for a direct path runs beside it.
            var paths = plane.SelectPaths(connector, connection, firstFlow);
            _selectors[connection] = paths;
            _ = ForgetSelectorWhenClosedAsync(connection);
            return connection;
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested)
        {
            throw new TimeoutException($"no connection within {connectTimeout.TotalSeconds:0} s");
        }
    }

    private async Task ForgetSelectorWhenClosedAsync(QuicConnection connection)
    {
        await connection.Closed.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        if (_selectors.TryRemove(connection, out var ended))
        {
            await ended.DisposeAsync();
        }
    }

    private void Forget(string connector)
    {
        if (_connections.TryRemove(connector, out var lazy) && lazy.IsValueCreated && lazy.Value.IsCompletedSuccessfully)
        {
            _ = lazy.Value.Result.DisposeAsync().AsTask();
        }
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var selector in _selectors.Values)
        {
            await selector.DisposeAsync();
        }
        _selectors.Clear();
        foreach (var lazy in _connections.Values.Where(l => l.IsValueCreated))
        {
            if (lazy.Value.IsCompletedSuccessfully)
            {
                await lazy.Value.Result.DisposeAsync();
            }
        }
    }

    [LoggerMessage(210, LogLevel.Information, "Connected to {Connector} ({Path})")]
    private static partial void LogConnected(ILogger logger, string connector, string path);

    [LoggerMessage(211, LogLevel.Warning, "Cannot reach {Connector}: {Reason}")]
    private static partial void LogConnectFailed(ILogger logger, string connector, string reason);

    /// <summary>What lets a flow stop waiting for a connector's answer: the controller reporting it gone, and whether another connector is left to try.</summary>
    private readonly record struct AnswerWatch(Func<bool> Gone, bool HasAlternative);
}

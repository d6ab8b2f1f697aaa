using System.Collections.Concurrent;
using Ferry.Client.Access;
using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;
using Ferry.Paths;
using Ferry.Quic;
using Microsoft.Extensions.Logging;

namespace Ferry.Client;

/// <summary>Opens flows as QUIC streams: one connection per connector (relayed, with a ticket from the controller), one stream per flow (UDP payloads ride the connection's datagrams).</summary>
/// <remarks><paramref name="session"/> gives the current controller session: connections outlive a reconnect to the controller.</remarks>
public sealed partial class QuicFlowOpener(Func<ControllerSessionClient?> session, Func<CancellationToken, Task<DataPlaneEndpoint>> dataPlane, ILogger logger) : IFlowOpener, IAsyncDisposable
{
    private static readonly TimeSpan ReplyTimeout = TimeSpan.FromSeconds(20);
    private readonly ConcurrentDictionary<string, Lazy<Task<QuicConnection>>> _connections = new(StringComparer.Ordinal);
    // One path selector per connection: it moves the connection between the relayed path and a direct one.
    private readonly ConcurrentDictionary<QuicConnection, PathSelector> _selectors = new();
    private static readonly TimeSpan FirstListWait = TimeSpan.FromSeconds(10);
    private readonly TaskCompletionSource _firstList = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile NetworkConnectors[] _connectors = [];

    /// <summary>The online connectors per network, as the controller last said.</summary>
    public void UpdateConnectors(NetworkConnectors[] connectors)
    {
        _connectors = connectors;
        _firstList.TrySetResult();
    }

    /// <summary>The path each open connection uses now: direct or relayed, round trips, bytes, and why not direct.</summary>
    public IReadOnlyList<PathStatus> Paths => [.. _selectors.Where(s => !s.Key.Closed.IsCompleted).Select(s => s.Value.Status()).OrderBy(p => p.Connector, StringComparer.Ordinal)];

    /// <summary>The connectors this client holds a connection to now.</summary>
    public IReadOnlyList<string> ConnectedTo => [.. _connections.Where(c => c.Value.IsValueCreated && c.Value.Value.IsCompletedSuccessfully).Select(c => c.Key)];

    public async Task<OpenedFlow> OpenAsync(ResourceGrant resource, FlowHeader header, CancellationToken cancellationToken)
    {
        if (!_firstList.Task.IsCompleted)
        {
            // A flow can come before the session's first connector list; waiting a moment beats refusing it.
            await _firstList.Task.WaitAsync(FirstListWait, cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
        var candidates = _connectors.FirstOrDefault(n => n.Network == resource.Network)?.Connectors ?? [];
        if (candidates.Length == 0)
        {
            return OpenedFlow.Refused(FlowStatus.Unreachable, $"no connector of network '{resource.Network}' is online");
        }
        var errors = new List<string>();
        // Try the network's connectors in turn until one answers; they are interchangeable.
        foreach (var connector in candidates)
        {
            try
            {
                var connection = await ConnectionToAsync(connector, cancellationToken);
                var stream = await connection.OpenBidirectionalStreamAsync(cancellationToken);
                try
                {
                    await header.WriteAsync(stream, cancellationToken);
                    using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                    timeout.CancelAfter(ReplyTimeout);
                    var reply = await FlowReply.ReadAsync(stream, timeout.Token);
                    return new OpenedFlow(reply, stream, s =>
                    {
                        ((QuicStream)s).CompleteWrites();
                        return ValueTask.CompletedTask;
                    });
                }
                catch
                {
                    await stream.DisposeAsync();
                    throw;
                }
            }
            catch (Exception e) when (!cancellationToken.IsCancellationRequested && e is QuicException or InvalidOperationException or Ferry.Relay.RelayException
                or System.Security.Authentication.AuthenticationException or OperationCanceledException or FlowProtocolException or IOException)
            {
                Forget(connector);
                errors.Add($"{connector}: {e.Message}");
                LogConnectFailed(logger, connector, e.Message);
            }
        }
        return OpenedFlow.Refused(FlowStatus.Unreachable, $"no connector of network '{resource.Network}' answered: {string.Join("; ", errors)}");
    }

    /// <summary>
    /// Opens a UDP flow: a stream for its header, reply and lifetime, with payloads on the connection's datagrams (see
    /// <see cref="UdpFlowFraming"/>). Connector choice and tickets are those of TCP flows.
    /// </summary>
    public async Task<OpenedUdpFlow> OpenUdpAsync(ResourceGrant resource, FlowHeader header, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(resource);
        ArgumentNullException.ThrowIfNull(header);
        if (!_firstList.Task.IsCompleted)
        {
            await _firstList.Task.WaitAsync(FirstListWait, cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
        var candidates = _connectors.FirstOrDefault(n => n.Network == resource.Network)?.Connectors ?? [];
        if (candidates.Length == 0)
        {
            return OpenedUdpFlow.Refused(FlowStatus.Unreachable, $"no connector of network '{resource.Network}' is online");
        }
        var errors = new List<string>();
        foreach (var connector in candidates)
        {
            try
            {
                var connection = await ConnectionToAsync(connector, cancellationToken);
                var datagrams = QuicUdpDatagrams.For(connection);
                var stream = await connection.OpenBidirectionalStreamAsync(cancellationToken);
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                timeout.CancelAfter(ReplyTimeout);
                // The mux owns the stream from here: it disposes it on refusal or failure.
                var (reply, flow) = await datagrams.OpenAsync(stream.Id, stream, s =>
                {
                    ((QuicStream)s).CompleteWrites();
                    return ValueTask.CompletedTask;
                }, header, timeout.Token);
                return new OpenedUdpFlow(reply, flow);
            }
            catch (Exception e) when (!cancellationToken.IsCancellationRequested && e is QuicException or InvalidOperationException or Ferry.Relay.RelayException
                or System.Security.Authentication.AuthenticationException or OperationCanceledException or FlowProtocolException or IOException)
            {
                Forget(connector);
                errors.Add($"{connector}: {e.Message}");
                LogConnectFailed(logger, connector, e.Message);
            }
        }
        return OpenedUdpFlow.Refused(FlowStatus.Unreachable, $"no connector of network '{resource.Network}' answered: {string.Join("; ", errors)}");
    }

    private async Task<QuicConnection> ConnectionToAsync(string connector, CancellationToken ct)
    {
        var lazy = _connections.GetOrAdd(connector, c => new Lazy<Task<QuicConnection>>(() => ConnectAsync(c)));
        var connection = await lazy.Value.WaitAsync(ct);
        if (connection.Closed.IsCompleted)
        {
            Forget(connector);
            lazy = _connections.GetOrAdd(connector, c => new Lazy<Task<QuicConnection>>(() => ConnectAsync(c)));
            connection = await lazy.Value.WaitAsync(ct);
        }
        return connection;
    }

    private async Task<QuicConnection> ConnectAsync(string connector)
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
        // The relay forwards only for a pair the controller allowed; the controller hands the same ticket to the connector.
        var controller = session() ?? throw new InvalidOperationException("no session with the controller right now");
        var ticket = await controller.RequestTicketAsync(connector, timeout.Token);
        await plane.BindTicketAsync(ticket.Ticket, timeout.Token);
        var connection = await plane.ConnectRelayedAsync(connector, timeout.Token);
        LogConnected(logger, connector, "relayed");
        // Traffic starts on the relay at once; the search for a direct path runs beside it.
        var selector = plane.SelectPaths(connector, connection, firstFlow);
        _selectors[connection] = selector;
        _ = ForgetSelectorWhenClosedAsync(connection);
        return connection;
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
}

using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Ferry.Core.Flows;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Ferry.Client.Access;

/// <summary>Limits shared by the client's local proxies.</summary>
public sealed class LoopbackProxyOptions
{
    /// <summary>The loopback port to listen on; 0 picks a free one (read it from <see cref="LoopbackProxy.LocalEndPoint"/>).</summary>
    public int Port { get; init; }

    /// <summary>How long an application may take to finish its SOCKS or CONNECT handshake.</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How long opening a flow (through Ferry or directly) may take.</summary>
    public TimeSpan OpenTimeout { get; init; } = TimeSpan.FromSeconds(15);

    /// <summary>Connections served at once; more are closed as they arrive. UDP listeners hold at most this many flows.</summary>
    public int MaxConnections { get; init; } = 4096;

    /// <summary>A UDP flow (of a UDP forward or a SOCKS5 UDP association) that carries no packet either way for this long is closed.</summary>
    public TimeSpan UdpIdleTimeout { get; init; } = TimeSpan.FromSeconds(60);
}

/// <summary>What the SOCKS5, HTTP CONNECT and port-forward listeners share: a loopback listener, concurrent connections, routing and copying.</summary>
public abstract partial class LoopbackProxy : ILoopbackListener
{
    private readonly ConcurrentDictionary<long, Task> _connections = new();
    private readonly CancellationTokenSource _stopping = new();
    private Socket? _listener;
    private Task? _acceptLoop;
    private long _nextConnection;
    private int _stopped;

    protected LoopbackProxy(string kind, ClientRoutes routes, IFlowOpener opener, LoopbackProxyOptions? options, ILogger? logger)
    {
        ArgumentNullException.ThrowIfNull(routes);
        ArgumentNullException.ThrowIfNull(opener);
        Kind = kind;
        Routes = routes;
        Opener = opener;
        Options = options ?? new LoopbackProxyOptions();
        Logger = logger ?? NullLogger.Instance;
    }

    /// <summary>"socks5", "http-connect" or "forward …", for logs.</summary>
    public string Kind { get; }

    protected ClientRoutes Routes { get; }

    protected IFlowOpener Opener { get; }

    protected LoopbackProxyOptions Options { get; }

    protected ILogger Logger { get; }

    /// <summary>Where the listener is bound, once started.</summary>
    public IPEndPoint LocalEndPoint => (IPEndPoint?)_listener?.LocalEndPoint ?? throw new InvalidOperationException($"the {Kind} listener has not started");

    /// <summary>Connections being served now.</summary>
    public int ActiveConnections => _connections.Count;

    /// <summary>Binds 127.0.0.1 on the configured port and starts accepting; throws <see cref="SocketException"/> when the port is taken.</summary>
    public Task StartAsync(CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _stopped) != 0, this);
        if (_listener is not null)
        {
            throw new InvalidOperationException($"the {Kind} listener is already started");
        }
        var listener = LoopbackSocket.Bind(SocketType.Stream, Options.Port, backlog: 1024);
        _listener = listener;
        Log.Listening(Logger, Kind, LocalEndPoint);
        _acceptLoop = AcceptLoopAsync(listener, _stopping.Token);
        return Task.CompletedTask;
    }

    /// <summary>Stops accepting, closes every connection, and waits (up to 5 s) for them to finish.</summary>
    public async Task StopAsync()
    {
        if (Interlocked.Exchange(ref _stopped, 1) != 0)
        {
            return;
        }
        await _stopping.CancelAsync();
        _listener?.Dispose();
        var pending = _connections.Values.ToList();
        if (_acceptLoop is not null)
        {
            pending.Add(_acceptLoop);
        }
        try
        {
            await Task.WhenAll(pending).WaitAsync(TimeSpan.FromSeconds(5));
            _stopping.Dispose();
        }
        catch (TimeoutException)
        {
            // Stragglers may still read the token, so the source stays undisposed; they end when their sockets do.
            Log.StopSlow(Logger, Kind, _connections.Count);
        }
        Log.Stopped(Logger, Kind);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        GC.SuppressFinalize(this);
    }

    /// <summary>Serves one accepted connection; the base disposes the socket afterwards.</summary>
    protected abstract Task HandleConnectionAsync(Socket socket, NetworkStream stream, CancellationToken cancellationToken);

    private async Task AcceptLoopAsync(Socket listener, CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await listener.AcceptAsync(cancellationToken);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            catch (SocketException e)
            {
                // Out of descriptors or a connection reset before accept: pause instead of spinning, then go on.
                Log.AcceptFailed(Logger, Kind, e.SocketErrorCode);
                try
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(100), cancellationToken);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
                continue;
            }
            if (_connections.Count >= Options.MaxConnections)
            {
                Log.TooManyConnections(Logger, Kind, Options.MaxConnections);
                socket.Dispose();
                continue;
            }
            socket.NoDelay = true;
            var id = Interlocked.Increment(ref _nextConnection);
            // The connection waits for its own registration, so its removal can never precede it.
            var registered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _connections[id] = ServeAsync(id, socket, registered.Task, cancellationToken);
            registered.SetResult();
        }
    }

    private async Task ServeAsync(long id, Socket socket, Task registered, CancellationToken cancellationToken)
    {
        await registered;
        var stream = new NetworkStream(socket, ownsSocket: true);
        try
        {
            await HandleConnectionAsync(socket, stream, cancellationToken);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Stopping.
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or FlowProtocolException or OperationCanceledException)
        {
            Log.ConnectionFailed(Logger, Kind, e.Message);
        }
#pragma warning disable CA1031 // One connection's bug must not fault StopAsync or take the other connections down; it is logged as an error.
        catch (Exception e)
#pragma warning restore CA1031
        {
            Log.ConnectionCrashed(Logger, Kind, e);
        }
        finally
        {
            await stream.DisposeAsync();
            _connections.TryRemove(id, out _);
        }
    }

    /// <summary>Routes a TCP destination and opens its flow through Ferry (or directly, with split tunnelling), bounded by the open timeout.</summary>
    protected async Task<OpenedFlow> OpenFlowAsync(string host, int port, EarlyApplicationData? early, CancellationToken cancellationToken)
    {
        var destination = FlowHeader.FormatHostPort(host, port);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(Options.OpenTimeout);
        var route = await Routes.MatchWhenKnownAsync(host, port, FlowProtocol.Tcp, Options.OpenTimeout, timeout.Token);
        if (route.Kind == RouteKind.Refused)
        {
            Log.FlowRefused(Logger, Kind, destination, route.Status, route.Reason);
            return OpenedFlow.Refused(route.Status, route.Reason);
        }
        OpenedFlow flow;
        try
        {
            flow = route.Kind == RouteKind.Direct
                ? await DirectDialer.DialAsync(host, port, timeout.Token)
                : await Opener.OpenAsync(route.Resource!, new FlowHeader(FlowProtocol.Tcp, host, port), early, timeout.Token);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            flow = OpenedFlow.Refused(FlowStatus.Timeout, $"opening the flow to {destination} took longer than {Options.OpenTimeout.TotalSeconds:0.#} s");
        }
        catch (Exception e) when (e is IOException or SocketException or FlowProtocolException or ObjectDisposedException)
        {
            flow = OpenedFlow.Refused(FlowStatus.Unreachable, $"the flow to {destination} failed before the connector answered: {e.Message}");
        }
        if (flow.Reply.IsOk)
        {
            Log.FlowOpened(Logger, Kind, destination, route.Kind == RouteKind.Direct ? "direct" : route.Resource!.Name);
        }
        else
        {
            Log.FlowRefused(Logger, Kind, destination, flow.Reply.Status, flow.Reply.Message);
        }
        return flow;
    }

    /// <summary>Copies an application connection and an opened flow until both ends finish, after sending bytes the application sent early.</summary>
    /// <param name="sentBefore">Bytes the flow already carried from the application before this copy (a port forward's early data).</param>
    protected async Task CopyAsync(Stream application, Func<Stream, ValueTask> completeApplicationWrites, OpenedFlow flow, ReadOnlyMemory<byte> early, long sentBefore, string destination, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(application);
        ArgumentNullException.ThrowIfNull(flow);
        await using (flow)
        {
            if (!early.IsEmpty)
            {
                await flow.Stream!.WriteAsync(early, cancellationToken);
                await flow.Stream.FlushAsync(cancellationToken);
            }
            var result = await FlowCopier.CopyAsync(application, completeApplicationWrites, flow.Stream!, flow.CompleteWrites!, cancellationToken);
            var sent = result.BytesToUpstream + early.Length + sentBefore;
            Log.FlowClosed(Logger, Kind, destination, result.Error, sent, result.BytesToClient);
            ClientMetrics.BytesMoved(sent, result.BytesToClient);
        }
    }
}

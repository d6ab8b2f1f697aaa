using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.Logging;

namespace Ferry.Controller.Edge;

/// <summary>The "address" Kestrel binds on a core: not a port, but the edges the core dials out to.</summary>
public sealed class EdgeLinkEndPoint(IReadOnlyList<DnsEndPoint> edges) : EndPoint
{
    public IReadOnlyList<DnsEndPoint> Edges { get; } = edges;

    public override string ToString() => "edges " + string.Join(",", Edges.Select(e => $"{e.Host}:{e.Port}"));
}

/// <summary>
/// A Kestrel transport for the core role: connections are accepted not from a listening socket but from links the core
/// dials out to each edge. Each edge gets a few idle links at all times; when the edge hands one a daemon's connection,
/// that link becomes a Kestrel connection (TLS, HTTP and WebSockets as usual) and a fresh link replaces it.
/// </summary>
public sealed partial class EdgeLinkTransport(byte[] secret, ILoggerFactory loggers) : IConnectionListenerFactory, IConnectionListenerFactorySelector
{
    /// <summary>Idle links held open to each edge, so a burst of daemons does not wait for dials.</summary>
    public const int IdleLinksPerEdge = 8;

    public bool CanBind(EndPoint endpoint) => endpoint is EdgeLinkEndPoint;

    public ValueTask<IConnectionListener> BindAsync(EndPoint endpoint, CancellationToken cancellationToken = default)
    {
        var edges = (EdgeLinkEndPoint)endpoint;
        return ValueTask.FromResult<IConnectionListener>(new Listener(edges, secret, loggers));
    }

    private sealed class Listener : IConnectionListener
    {
        private readonly Channel<(Socket Socket, IPEndPoint Remote)> _accepted = Channel.CreateUnbounded<(Socket, IPEndPoint)>();
        private readonly CancellationTokenSource _stop = new();
        private readonly SocketConnectionContextFactory _contexts;
        private readonly List<Task> _dialers = [];
        private readonly byte[] _secret;
        private readonly ILogger _logger;

        public Listener(EdgeLinkEndPoint endpoint, byte[] secret, ILoggerFactory loggers)
        {
            EndPoint = endpoint;
            _secret = secret;
            _logger = loggers.CreateLogger<EdgeLinkTransport>();
            _contexts = new SocketConnectionContextFactory(new SocketConnectionFactoryOptions(), _logger);
            foreach (var edge in endpoint.Edges)
            {
                var state = new EdgeState(edge);
                for (var i = 0; i < IdleLinksPerEdge; i++)
                {
                    _dialers.Add(Task.Run(() => DialLoopAsync(state, _stop.Token)));
                }
            }
        }

        public EndPoint EndPoint { get; }

        public async ValueTask<ConnectionContext?> AcceptAsync(CancellationToken cancellationToken = default)
        {
            try
            {
                var (socket, remote) = await _accepted.Reader.ReadAsync(cancellationToken);
                var context = _contexts.Create(socket);
                // The daemon's own address, as the edge saw it: what the controller logs and reports as its public IP.
                context.RemoteEndPoint = remote;
                return context;
            }
            catch (ChannelClosedException)
            {
                return null;
            }
        }

        /// <summary>One idle link to <paramref name="edge"/> at a time, replaced as soon as it carries a connection or dies.</summary>
        private async Task DialLoopAsync(EdgeState edge, CancellationToken ct)
        {
            var backoff = TimeSpan.FromMilliseconds(250);
            while (!ct.IsCancellationRequested)
            {
                var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
                try
                {
                    EdgeLinkProtocol.EnableKeepAlive(socket);
                    using (var connect = CancellationTokenSource.CreateLinkedTokenSource(ct))
                    {
                        connect.CancelAfter(TimeSpan.FromSeconds(5));
                        await socket.ConnectAsync(edge.Address, connect.Token);
                        var challenge = new byte[EdgeLinkProtocol.ChallengeLength];
                        if (!await EdgeLinkProtocol.ReadExactlyAsync(socket, challenge, connect.Token))
                        {
                            throw new IOException("the edge closed the link before its challenge");
                        }
                        await socket.SendAsync(EdgeLinkProtocol.Answer(challenge, _secret), SocketFlags.None, connect.Token);
                        if (!await EdgeLinkProtocol.ReadAcceptedAsync(socket, connect.Token))
                        {
                            throw new IOException("the edge refused the link: core and edge have different --edge-secret-file contents");
                        }
                    }
                    edge.Up(_logger);
                    backoff = TimeSpan.FromMilliseconds(250);
                    var remote = await EdgeLinkProtocol.ReadAnnouncementAsync(socket, ct);
                    if (remote is null)
                    {
                        socket.Dispose();
                        edge.Down(_logger, "the edge closed the link");
                        continue;
                    }
                    _accepted.Writer.TryWrite((socket, remote));
                }
                catch (OperationCanceledException) when (ct.IsCancellationRequested)
                {
                    socket.Dispose();
                    return;
                }
                catch (Exception e) when (e is SocketException or IOException or InvalidDataException or OperationCanceledException)
                {
                    socket.Dispose();
                    edge.Down(_logger, e is OperationCanceledException ? "no answer within 5 s" : e.Message);
                    try
                    {
                        await Task.Delay(backoff, ct);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                    backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, TimeSpan.FromSeconds(5).Ticks));
                }
            }
        }

        public async ValueTask UnbindAsync(CancellationToken cancellationToken = default)
        {
            await _stop.CancelAsync();
            _accepted.Writer.TryComplete();
            await Task.WhenAll(_dialers).WaitAsync(cancellationToken);
        }

        public async ValueTask DisposeAsync()
        {
            if (!_stop.IsCancellationRequested)
            {
                await UnbindAsync();
            }
            while (_accepted.Reader.TryRead(out var pending))
            {
                pending.Socket.Dispose();
            }
            _contexts.Dispose();
            _stop.Dispose();
        }
    }

    /// <summary>Whether an edge is linked, so the log says once when it comes and once when it goes, not per link.</summary>
    private sealed class EdgeState(DnsEndPoint address)
    {
        private int _up = -1;

        public DnsEndPoint Address { get; } = address;

        public void Up(ILogger logger)
        {
            if (Interlocked.Exchange(ref _up, 1) != 1)
            {
                LogEdgeLinked(logger, $"{Address.Host}:{Address.Port}");
            }
        }

        public void Down(ILogger logger, string reason)
        {
            if (Interlocked.Exchange(ref _up, 0) != 0)
            {
                LogEdgeUnreachable(logger, $"{Address.Host}:{Address.Port}", reason);
            }
        }
    }

    [LoggerMessage(175, LogLevel.Information, "Linked to edge {Edge}")]
    private static partial void LogEdgeLinked(ILogger logger, string edge);

    [LoggerMessage(176, LogLevel.Warning, "Edge {Edge} not linked: {Reason}; dialing again")]
    private static partial void LogEdgeUnreachable(ILogger logger, string edge, string reason);
}

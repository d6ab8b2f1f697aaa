using System.Collections.Concurrent;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Ferry.Core.Security;

namespace Ferry.Relay;

/// <summary>The relay data plane: accepts mutually authenticated TLS links from peers and forwards opaque packets between ticketed pairs.</summary>
public sealed partial class RelayServer : IAsyncDisposable
{
    private readonly RelayServerOptions _options;
    private readonly ILogger _logger;
    private readonly TimeProvider _clock;
    private readonly ECDsa _ticketKey;
    private volatile SslStreamCertificateContext _certificateContext;
    private readonly CancellationTokenSource _stopping = new();
    private readonly List<TcpListener> _listeners = [];
    private readonly List<Task> _acceptLoops = [];
    private readonly ConcurrentDictionary<string, ServerLink> _links = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<long, Task> _connections = new();
    private readonly long[] _refusals = new long[256];
    private readonly Lock _rateLock = new();
    private ITimer? _sweeper;
    private long _connectionIds;
    private int _connectionCount;
    private long _linksAccepted;
    private long _ticketsBound;
    private long _bytesIn;
    private long _bytesOut;
    private long _packetsIn;
    private long _packetsOut;
    private long _packetsDropped;
    private long _rateLastPackets;
    private long _rateLastTimestamp;
    private double _packetsPerSecond;
    private int _state; // 0 new, 1 running, 2 stopped

    /// <summary>Creates a relay; call <see cref="StartAsync"/> to listen.</summary>
    public RelayServer(RelayServerOptions options, ILogger<RelayServer>? logger = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(options.ServerCertificate);
        ArgumentNullException.ThrowIfNull(options.CaCertificate);
        if (!options.ServerCertificate.HasPrivateKey)
        {
            throw new ArgumentException("The relay certificate needs its private key.", nameof(options));
        }

        var identity = PeerIdentity.FromCertificate(options.ServerCertificate);
        if (identity is null || PeerIdentity.KindOf(identity) != PeerIdentity.Relay)
        {
            throw new ArgumentException($"The relay certificate CN must be relay/<id>, not '{options.ServerCertificate.Subject}'.", nameof(options));
        }

        if (options.IdleTimeout <= TimeSpan.Zero || options.HandshakeTimeout <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(options), "Timeouts must be positive.");
        }

        if (options.MaxBindingsPerLink is < 1 or > ushort.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(options), "MaxBindingsPerLink is 1..65535.");
        }

        _options = options;
        _logger = (ILogger?)logger ?? NullLogger.Instance;
        _clock = options.TimeProvider;
        Identity = identity;
        _ticketKey = options.CaCertificate.GetECDsaPublicKey()
            ?? throw new ArgumentException("The CA certificate must hold an ECDSA P-256 key (it signs relay tickets).", nameof(options));
        // offline: the chain is our own CA, so there is nothing to fetch and nothing should be tried.
        _certificateContext = SslStreamCertificateContext.Create(options.ServerCertificate, additionalCertificates: null, offline: true);
    }

    /// <summary>The relay's identity, "relay/&lt;id&gt;", from its certificate.</summary>
    public string Identity { get; }

    /// <summary>The endpoints actually listened on (ports resolved when 0 was asked for).</summary>
    public IReadOnlyList<IPEndPoint> BoundEndpoints { get; private set; } = [];

    internal RelayServerOptions Options => _options;

    internal TimeProvider Clock => _clock;

    internal ECDsa TicketKey => _ticketKey;

    internal ILogger Logger => _logger;

    /// <summary>Binds every endpoint and starts accepting links.</summary>
    public Task StartAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        if (Interlocked.CompareExchange(ref _state, 1, 0) != 0)
        {
            throw new InvalidOperationException("The relay was already started.");
        }

        if (_options.Endpoints.Count == 0)
        {
            throw new InvalidOperationException("No endpoints to listen on.");
        }

        var bound = new List<IPEndPoint>();
        try
        {
            foreach (var endpoint in _options.Endpoints)
            {
                var listener = new TcpListener(endpoint);
                listener.Start(backlog: 512);
                _listeners.Add(listener);
                var local = (IPEndPoint)listener.LocalEndpoint;
                bound.Add(local);
                LogListening(_logger, Identity, local);
            }
        }
        catch
        {
            foreach (var listener in _listeners)
            {
                listener.Stop();
            }

            throw;
        }

        BoundEndpoints = bound;
        _rateLastTimestamp = _clock.GetTimestamp();
        var period = TimeSpan.FromTicks(Math.Min(TimeSpan.FromSeconds(1).Ticks, _options.IdleTimeout.Ticks / 2));
        _sweeper = _clock.CreateTimer(static state => ((RelayServer)state!).Sweep(), this, period, period);
        foreach (var listener in _listeners)
        {
            _acceptLoops.Add(Task.Run(() => AcceptLoopAsync(listener, _stopping.Token), CancellationToken.None));
        }

        return Task.CompletedTask;
    }

    /// <summary>A consistent-enough snapshot of the counters (each value is read atomically).</summary>
    /// <summary>Serves new links with a renewed certificate (same identity); links already up keep theirs.</summary>
    public void UpdateCertificate(X509Certificate2 certificate)
    {
        ArgumentNullException.ThrowIfNull(certificate);
        if (!certificate.HasPrivateKey || PeerIdentity.FromCertificate(certificate) != Identity)
        {
            throw new ArgumentException($"a renewed relay certificate must carry its private key and the identity {Identity}", nameof(certificate));
        }
        _certificateContext = SslStreamCertificateContext.Create(certificate, additionalCertificates: null, offline: true);
    }

    public RelayCounters GetCounters()
    {
        var refusals = new Dictionary<RelayRefusal, long>();
        for (var i = 0; i < _refusals.Length; i++)
        {
            var count = Interlocked.Read(ref _refusals[i]);
            if (count > 0)
            {
                refusals[(RelayRefusal)i] = count;
            }
        }

        double pps;
        lock (_rateLock)
        {
            pps = _packetsPerSecond;
        }

        return new RelayCounters(
            _links.Count,
            Interlocked.Read(ref _linksAccepted),
            Interlocked.Read(ref _bytesIn),
            Interlocked.Read(ref _bytesOut),
            Interlocked.Read(ref _packetsIn),
            Interlocked.Read(ref _packetsOut),
            Interlocked.Read(ref _packetsDropped),
            pps,
            refusals)
        {
            TicketsBound = Interlocked.Read(ref _ticketsBound),
        };
    }

    /// <summary>Stops listening, closes every link with an Error frame, and waits (bounded by the token) for them to end.</summary>
    public async Task StopAsync(CancellationToken cancellationToken = default)
    {
        if (Interlocked.Exchange(ref _state, 2) == 2)
        {
            return;
        }

        foreach (var listener in _listeners)
        {
            listener.Stop();
        }

        // Close links before cancelling, so each records and sends ShuttingDown rather than a bare cancellation.
        foreach (var link in _links.Values)
        {
            link.Close(RelayRefusal.ShuttingDown, "relay shutting down", countAsRefusal: false);
        }

        await _stopping.CancelAsync().ConfigureAwait(false);
        if (_sweeper is not null)
        {
            await _sweeper.DisposeAsync().ConfigureAwait(false);
        }

        try
        {
            await Task.WhenAll(_acceptLoops.Concat(_connections.Values)).WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // The caller bounded the wait; links still ending will finish on their own.
        }

        LogStopped(_logger, Identity);
    }

    /// <summary>Stops the relay, waiting up to five seconds for links to close.</summary>
    public async ValueTask DisposeAsync()
    {
        using (var bound = new CancellationTokenSource(TimeSpan.FromSeconds(5)))
        {
            await StopAsync(bound.Token).ConfigureAwait(false);
        }

        // _stopping is not disposed: links still finishing may hold its token, and a source without timers owns nothing.
        _ticketKey.Dispose();
    }

    internal void CountRefusal(RelayRefusal reason) => Interlocked.Increment(ref _refusals[(int)reason]);

    internal void CountDropped(RelayRefusal reason)
    {
        Interlocked.Increment(ref _packetsDropped);
        CountRefusal(reason);
    }

    internal void CountIn(int bytes, bool isPacket)
    {
        Interlocked.Add(ref _bytesIn, bytes);
        if (isPacket)
        {
            Interlocked.Increment(ref _packetsIn);
        }
    }

    internal void CountBinding() => Interlocked.Increment(ref _ticketsBound);

    internal void CountOut(OutboundFrame frame)
    {
        Interlocked.Add(ref _bytesOut, frame.Length);
        if (frame.IsData)
        {
            Interlocked.Increment(ref _packetsOut);
        }
    }

    internal bool TryGetLink(string identity, out ServerLink? link) => _links.TryGetValue(identity, out link);

    private async Task AcceptLoopAsync(TcpListener listener, CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await listener.AcceptSocketAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (Volatile.Read(ref _state) == 2 || ex is OperationCanceledException or ObjectDisposedException or InvalidOperationException)
            {
                // Stopping: the listener was stopped under us.
                break;
            }
            catch (SocketException ex)
            {
                // A connection reset between SYN and accept is routine. Resource exhaustion (EMFILE) is not, and would
                // spin this loop, so pause briefly before accepting again.
                LogAcceptFailed(_logger, Identity, ex.SocketErrorCode);
                try
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(50), cancellationToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    break;
                }

                continue;
            }

            if (Interlocked.Increment(ref _connectionCount) > _options.MaxConnections)
            {
                Interlocked.Decrement(ref _connectionCount);
                CountRefusal(RelayRefusal.TooManyConnections);
                socket.Dispose();
                continue;
            }

            var id = Interlocked.Increment(ref _connectionIds);
            var task = HandleConnectionAsync(socket, cancellationToken);
            _connections[id] = task;
            _ = task.ContinueWith(
                static (_, state) =>
                {
                    var (server, id) = ((RelayServer, long))state!;
                    server._connections.TryRemove(id, out Task? _);
                    Interlocked.Decrement(ref server._connectionCount);
                },
                (this, id),
                CancellationToken.None,
                TaskContinuationOptions.ExecuteSynchronously,
                TaskScheduler.Default);
        }
    }

    private async Task HandleConnectionAsync(Socket socket, CancellationToken stopping)
    {
        // Leave the accept loop at once; the handshake runs on its own.
        await Task.Yield();
        var remote = socket.RemoteEndPoint as IPEndPoint;
        socket.NoDelay = true;
        var ssl = new SslStream(new NetworkStream(socket, ownsSocket: true), leaveInnerStreamOpen: false);
        var refusal = RelayRefusal.None;
        var refusalText = string.Empty;
        string? identity = null;
        try
        {
            using var handshakeTimeout = new CancellationTokenSource(_options.HandshakeTimeout, _clock);
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(stopping, handshakeTimeout.Token);
            var options = new SslServerAuthenticationOptions
            {
                ServerCertificateContext = _certificateContext,
                ClientCertificateRequired = true,
                EnabledSslProtocols = SslProtocols.Tls13,
                CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                ApplicationProtocols = [RelayTls.Alpn],
                RemoteCertificateValidationCallback = (_, certificate, _, _) =>
                {
                    // The platform's verdict (policy errors) is ignored on purpose: it judges against the system store.
                    refusal = RelayTls.Validate(certificate, _options.CaCertificate, _clock.GetUtcNow(), out identity, out refusalText);
                    return refusal == RelayRefusal.None;
                },
            };
            await ssl.AuthenticateAsServerAsync(options, linked.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is AuthenticationException or IOException or OperationCanceledException or SocketException or ObjectDisposedException)
        {
            if (refusal == RelayRefusal.None)
            {
                refusal = RelayRefusal.HandshakeFailed;
                refusalText = ex is OperationCanceledException ? "handshake timed out or relay stopping" : ex.Message;
            }

            CountRefusal(refusal);
            LogHandshakeRefused(_logger, Identity, remote, refusal, refusalText);
            await ssl.DisposeAsync().ConfigureAwait(false);
            return;
        }

        if (identity is null)
        {
            // TLS 1.3 servers always see the client certificate before the handshake completes; this is a guard, not a path.
            CountRefusal(RelayRefusal.NoClientCertificate);
            LogHandshakeRefused(_logger, Identity, remote, RelayRefusal.NoClientCertificate, "no identity after handshake");
            await ssl.DisposeAsync().ConfigureAwait(false);
            return;
        }

        var link = new ServerLink(this, ssl, identity);
        _links.AddOrUpdate(
            identity,
            link,
            (_, previous) =>
            {
                // The newest link wins: a peer that lost its connection silently reconnects before the old one times out.
                previous.Close(RelayRefusal.Replaced, "replaced by a newer link of the same identity", countAsRefusal: true);
                return link;
            });
        Interlocked.Increment(ref _linksAccepted);
        LogLinkUp(_logger, Identity, identity, remote);
        if (stopping.IsCancellationRequested)
        {
            link.Close(RelayRefusal.ShuttingDown, "relay shutting down", countAsRefusal: false);
        }

        try
        {
            await link.RunAsync(stopping).ConfigureAwait(false);
        }
        finally
        {
            _links.TryRemove(new KeyValuePair<string, ServerLink>(identity, link));
            LogLinkDown(_logger, Identity, identity, remote, link.CloseReason, link.CloseMessage);
        }
    }

    private void Sweep()
    {
        try
        {
            var now = _clock.GetTimestamp();
            var packets = Interlocked.Read(ref _packetsIn);
            lock (_rateLock)
            {
                var seconds = _clock.GetElapsedTime(_rateLastTimestamp, now).TotalSeconds;
                if (seconds > 0)
                {
                    _packetsPerSecond = (packets - _rateLastPackets) / seconds;
                    _rateLastPackets = packets;
                    _rateLastTimestamp = now;
                }
            }

            foreach (var link in _links.Values)
            {
                if (_clock.GetElapsedTime(link.LastReceivedTimestamp, now) > _options.IdleTimeout)
                {
                    link.Close(RelayRefusal.IdleTimeout, $"nothing received for {_options.IdleTimeout.TotalSeconds:0.#} s", countAsRefusal: true);
                }
            }
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            // A timer callback must never take the process down; the next tick tries again.
            LogSweepFailed(_logger, Identity, ex);
        }
    }
}

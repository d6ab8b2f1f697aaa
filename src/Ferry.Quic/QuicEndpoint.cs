using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Threading.Channels;
using Ferry.Quic.Interop;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Ferry.Quic.Internal;
using static Ferry.Quic.Interop.Ngtcp2Const;

namespace Ferry.Quic;

/// <summary>
/// One UDP socket that both accepts and initiates QUIC connections. A single receive loop demultiplexes
/// datagrams by connection ID; a single send loop writes what connections produce. Datagrams whose first
/// byte is 0..3 (STUN, RFC 7983) go to the non-QUIC handler so STUN can share the socket.
/// </summary>
public sealed class QuicEndpoint : IAsyncDisposable, IPacketSink, IDatagramReceiver
{
    private const int MaxDatagram = 65536;
    private const int MaxAddressCache = 4096;
    private const int MaxConnections = 10_000;

    // Bursts of a fast connection overflow smaller buffers (RcvbufErrors); as root the size is forced past rmem_max.
    private const int SocketBufferBytes = 16 << 20;

    private readonly Socket _socket;
    private readonly NativeAddress _local;
    private readonly ConcurrentDictionary<CidKey, QuicConnection> _connections = new();
    private readonly ConcurrentDictionary<SocketAddress, NativeAddress> _addresses = new();
    private readonly ConcurrentDictionary<CidKey, ClosingConnection> _closing = new();
    private readonly Channel<QuicConnection> _accepted;
    private readonly Channel<OutgoingDatagram> _sendQueue = Channel.CreateUnbounded<OutgoingDatagram>(new UnboundedChannelOptions { SingleReader = true });
    private readonly CancellationTokenSource _cts = new();
    private volatile TlsContext? _serverTls;
    private readonly QuicConnectionOptions _serverOptions;
    private readonly UdpBatchIo? _io;
    private readonly List<QuicConnection> _deferredFlushes = [];

    // The list of the last relay delivery batch, kept for the next so a batch allocates nothing.
    private List<QuicConnection>? _spareRelayDeferred;
    private NativeAddress? _lastRemote;
    private readonly Task _receiveLoop;
    private readonly Task _sendLoop;
    private readonly byte[] _resetKey;
    private readonly byte[] _tokenKey = RandomNumberGenerator.GetBytes(32);
    private readonly bool _validateAddresses;
    private Action<ReadOnlyMemory<byte>, IPEndPoint>? _nonQuicHandler;
    private long _resetWindowStartMs;
    private int _resetsInWindow;
    private int _disposed;

    private QuicEndpoint(QuicEndpointOptions options)
    {
        QuicSupport.ThrowIfNotSupported();
        _socket = new Socket(options.LocalEndPoint.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        try
        {
            _socket.Bind(options.LocalEndPoint);
            if (UdpBatchIo.IsSupported && !options.DisableBatchedIo)
            {
                _io = new UdpBatchIo(_socket, SocketBufferBytes);
            }
            else
            {
                // The kernel caps these at rmem_max/wmem_max.
                _socket.ReceiveBufferSize = SocketBufferBytes;
                _socket.SendBufferSize = SocketBufferBytes;
            }

            _local = new NativeAddress((IPEndPoint)_socket.LocalEndPoint!) { Sink = this };
            _serverTls = options.ServerTls is null ? null : new TlsContext(options.ServerTls, isServer: true);
        }
        catch
        {
            _socket.Dispose();
            throw;
        }

        _serverOptions = options.ServerConnectionOptions;
        Logger = options.Logger ?? NullLogger.Instance;
        _validateAddresses = options.ValidateClientAddresses;
        if (options.StatelessResetKey is { Length: < 16 })
        {
            throw new ArgumentException("StatelessResetKey must be at least 16 bytes.", nameof(options));
        }

        _resetKey = options.StatelessResetKey?.ToArray() ?? RandomNumberGenerator.GetBytes(32);
        _accepted = Channel.CreateBounded<QuicConnection>(new BoundedChannelOptions(options.AcceptQueueLength) { FullMode = BoundedChannelFullMode.Wait });
        QuicLog.EndpointBound(Logger, _local.EndPoint, _serverTls is not null);
        if (_io is not null)
        {
            QuicLog.SocketIo(Logger, _local.EndPoint, _io.ReceiveBufferSize, _io.SendBufferSize, _io.GsoEnabled, _io.GroEnabled);
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _receiveLoop = done.Task;

            // A dedicated thread blocks in recvmmsg: no thread-pool hop per datagram, and one wake-up drains a whole burst.
            new Thread(() => ReceiveThread(done)) { IsBackground = true, Name = "Ferry QUIC receive" }.Start();
        }
        else
        {
            _receiveLoop = Task.Run(ReceiveLoopAsync);
        }

        _sendLoop = Task.Run(SendLoopAsync);
    }

    internal ILogger Logger { get; }

    /// <summary>The bound local address.</summary>
    public IPEndPoint LocalEndPoint => _local.EndPoint;

    /// <summary>Binds a UDP socket and starts the endpoint's receive and send loops.</summary>
    public static QuicEndpoint Bind(QuicEndpointOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new QuicEndpoint(options);
    }

    /// <summary>Connects to a peer from this endpoint's socket and completes after the TLS handshake.</summary>
    public ValueTask<QuicConnection> ConnectAsync(IPEndPoint remote, QuicTlsOptions tls, QuicConnectionOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(remote);
        return ConnectAsync(CreatePath(remote), tls, options, cancellationToken);
    }

    /// <summary>Connects over a given path (UDP or relay) and completes after the TLS handshake.</summary>
    public ValueTask<QuicConnection> ConnectAsync(IQuicPath path, QuicTlsOptions tls, QuicConnectionOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(tls);
        var p = OwnPath(path);
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        return QuicConnection.ConnectAsync(this, p.Local, p.Remote, tls, options ?? QuicConnectionOptions.Default, cancellationToken);
    }

    /// <summary>The UDP path from this endpoint's socket to a remote address.</summary>
    public UdpQuicPath CreatePath(IPEndPoint remote)
    {
        ArgumentNullException.ThrowIfNull(remote);
        return new UdpQuicPath(this, _local, GetAddress(remote));
    }

    /// <summary>
    /// A virtual path carried by a relay link: <paramref name="send"/> carries outgoing datagrams (called from one
    /// loop, in order); call <see cref="RelayQuicPath.Deliver"/> with datagrams that arrive over the link.
    /// </summary>
    public RelayQuicPath CreateRelayPath(Func<ReadOnlyMemory<byte>, CancellationToken, ValueTask> send)
    {
        ArgumentNullException.ThrowIfNull(send);
        return new RelayQuicPath(this, send);
    }

    internal IQuicPathInternal OwnPath(IQuicPath path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (path is not IQuicPathInternal p || p.Endpoint != this)
        {
            throw new ArgumentException("The path must come from this endpoint's CreatePath or CreateRelayPath.", nameof(path));
        }

        return p;
    }

    /// <summary>Waits for the next incoming connection whose handshake has completed.</summary>
    public async ValueTask<QuicConnection> AcceptConnectionAsync(CancellationToken cancellationToken = default)
    {
        if (_serverTls is null)
        {
            throw new InvalidOperationException("This endpoint was bound without ServerTls, so it does not accept connections.");
        }

        try
        {
            return await _accepted.Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            throw new ObjectDisposedException(nameof(QuicEndpoint));
        }
    }

    /// <summary>
    /// Receives datagrams whose first byte is 0..3 (STUN and other RFC 7983 non-QUIC traffic). The handler runs
    /// on the receive loop and must not block; the memory is only valid during the call.
    /// </summary>
    /// <summary>Accepts new connections with a renewed certificate; connections already up keep the one they started with.</summary>
    public void UpdateServerTls(QuicTlsOptions tls)
    {
        ArgumentNullException.ThrowIfNull(tls);
        if (_serverTls is null)
        {
            throw new InvalidOperationException("This endpoint was bound without ServerTls, so it has no server certificate to renew.");
        }
        var old = Interlocked.Exchange(ref _serverTls, new TlsContext(tls, isServer: true));
        // A handshake may have picked up the old context an instant ago; sessions hold their own reference, so a late release is enough.
        _ = Task.Delay(TimeSpan.FromSeconds(30)).ContinueWith(_ => old?.Dispose(), TaskScheduler.Default);
    }

    public void SetNonQuicPacketHandler(Action<ReadOnlyMemory<byte>, IPEndPoint>? handler) => _nonQuicHandler = handler;

    /// <summary>Sends a non-QUIC datagram (for example a STUN request) from this endpoint's socket.</summary>
    public Task SendNonQuicAsync(ReadOnlyMemory<byte> datagram, IPEndPoint remote, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        if (datagram.Length > MaxDatagram)
        {
            throw new ArgumentOutOfRangeException(nameof(datagram));
        }

        var buffer = ArrayPool<byte>.Shared.Rent(datagram.Length);
        datagram.CopyTo(buffer);
        var sent = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        EnqueueSend(buffer, datagram.Length, GetAddress(remote), sent);
        return sent.Task.WaitAsync(cancellationToken);
    }

    /// <summary>Closes every connection (error code 0), then stops the loops and the socket.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _accepted.Writer.TryComplete();
        foreach (var connection in _connections.Values.Distinct().ToList())
        {
            await connection.DetachOrCloseAsync(this).ConfigureAwait(false);
        }

        while (_accepted.Reader.TryRead(out var unaccepted))
        {
            await unaccepted.DisposeAsync().ConfigureAwait(false);
        }

        _sendQueue.Writer.TryComplete();
        await _sendLoop.WaitAsync(TimeSpan.FromSeconds(2)).ContinueWith(static _ => { }, TaskScheduler.Default).ConfigureAwait(false);
        await _cts.CancelAsync().ConfigureAwait(false);
        try
        {
            // Wakes a thread blocked in recvmmsg at once (the kernel reports ENOTCONN for UDP but still wakes it).
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
        }

        _socket.Dispose();
        bool stopped = await _receiveLoop.WaitAsync(TimeSpan.FromSeconds(2)).ContinueWith(static t => t.IsCompletedSuccessfully, TaskScheduler.Default).ConfigureAwait(false);
        if (stopped)
        {
            _io?.Dispose(); // never under a receive thread still using the slots
        }

        _serverTls?.Dispose();
        _cts.Dispose();
    }

    /// <summary>Test hook for fault injection: return false to drop an outgoing datagram.</summary>
    internal Func<ReadOnlyMemory<byte>, IPEndPoint, bool>? SendFilter { get; set; }

    /// <summary>The stateless reset token for one of our CIDs: HKDF of the endpoint's reset key and the CID.</summary>
    internal unsafe void MakeStatelessResetToken(ngtcp2_cid* cid, byte* token)
    {
        fixed (byte* key = _resetKey)
        {
            if (Ngtcp2Crypto.ngtcp2_crypto_generate_stateless_reset_token(token, key, (nuint)_resetKey.Length, cid) != 0)
            {
                throw new QuicException(QuicError.InternalError, "ngtcp2_crypto_generate_stateless_reset_token failed");
            }
        }
    }

    internal void Register(CidKey key, QuicConnection connection) => _connections[key] = connection;

    internal void Unregister(CidKey key, QuicConnection connection) => _connections.TryRemove(new KeyValuePair<CidKey, QuicConnection>(key, connection));

    /// <summary>Removes a finished connection; with a close packet, its CIDs answer with it until the closing period ends.</summary>
    internal void Unregister(QuicConnection connection, byte[]? closePacket, NativeAddress local, NativeAddress remote, TimeSpan closingPeriod)
    {
        var keys = connection.ConnectionIds.ToArray();
        var closing = closePacket is null || _disposed != 0 ? null : new ClosingConnection(closePacket, local, remote);
        foreach (var key in keys)
        {
            Unregister(key, connection);
            if (closing is not null)
            {
                _closing[key] = closing;
            }
        }

        if (closing is not null)
        {
            _ = Task.Delay(closingPeriod).ContinueWith(
                _ =>
                {
                    foreach (var key in keys)
                    {
                        _closing.TryRemove(new KeyValuePair<CidKey, ClosingConnection>(key, closing));
                    }
                },
                CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
        }
    }

    internal bool EnqueueAccepted(QuicConnection connection) => _accepted.Writer.TryWrite(connection);

    void IPacketSink.EnqueueSend(byte[] buffer, int length, NativeAddress to, TaskCompletionSource? sent) => EnqueueSend(buffer, length, to, sent);

    void IPacketSink.SendBatch(ReadOnlySpan<OutgoingPacket> packets)
    {
        if (_io is null || SendFilter is not null || _disposed != 0 || !SameFamily(packets))
        {
            PacketSinks.CopyEach(this, packets);
            return;
        }

        // Straight from the flush to the kernel: no queue hop, one syscall for the whole flush.
        _io.Send(packets);
    }

    private bool SameFamily(ReadOnlySpan<OutgoingPacket> packets)
    {
        foreach (var p in packets)
        {
            if (p.To.Length != _local.Length)
            {
                return false; // e.g. an IPv4 peer on a dual-mode socket: let .NET map the address
            }
        }

        return true;
    }

    void IDatagramReceiver.OnDatagram(ReadOnlySpan<byte> datagram, ReadOnlySpan<byte> sockaddr)
    {
        try
        {
            var remote = _lastRemote is { } last && last.Matches(sockaddr) ? last : ResolveSockaddr(sockaddr);
            _lastRemote = remote;
            Dispatch(datagram, _local, remote, fromSocket: true, _deferredFlushes);
        }
        catch (Exception e)
        {
            // One malformed or unlucky datagram must not stop the endpoint.
            QuicLog.DispatchFailed(Logger, null, e);
        }
    }

    void IDatagramReceiver.OnBatchEnd() => FlushDeferred(_deferredFlushes);

    /// <summary>Lets each connection a batch of datagrams reached answer once, then empties the list.</summary>
    private void FlushDeferred(List<QuicConnection> deferred)
    {
        foreach (var connection in deferred)
        {
            try
            {
                connection.FlushDeferred();
            }
            catch (Exception e)
            {
                QuicLog.DispatchFailed(Logger, null, e);
            }
        }

        deferred.Clear();
    }

    private NativeAddress ResolveSockaddr(ReadOnlySpan<byte> sockaddr)
    {
        var sa = new SocketAddress(_socket.AddressFamily, sockaddr.Length);
        sockaddr.CopyTo(sa.Buffer.Span);
        return GetAddress(sa);
    }

    private void ReceiveThread(TaskCompletionSource done)
    {
        try
        {
            var ct = _cts.Token;
            while (!ct.IsCancellationRequested && _io!.Receive(this) >= 0)
            {
            }
        }
        finally
        {
            done.TrySetResult();
        }
    }

    /// <summary>
    /// Starts a batch of datagrams arriving over relay paths: each connection they reach processes them as they come but
    /// answers (acknowledgements, stream data, flow-control credit) once, when the batch is disposed, as after a
    /// <c>recvmmsg</c> batch on the socket. Dispose it before awaiting anything.
    /// </summary>
    public RelayDeliveryBatch BeginRelayDelivery() => new(this, Interlocked.Exchange(ref _spareRelayDeferred, null) ?? []);

    internal void EndRelayDelivery(List<QuicConnection> deferred)
    {
        FlushDeferred(deferred);
        _spareRelayDeferred = deferred;
    }

    internal void DeliverFromPath(ReadOnlySpan<byte> datagram, NativeAddress local, NativeAddress remote, List<QuicConnection>? deferred = null)
    {
        if (_disposed != 0)
        {
            return;
        }

        try
        {
            Dispatch(datagram, local, remote, fromSocket: false, deferred);
        }
        catch (Exception e)
        {
            // Same rule as the socket loop: one bad datagram never propagates.
            QuicLog.DispatchFailed(Logger, remote.EndPoint, e);
        }
    }

    internal void EnqueueSend(byte[] buffer, int length, NativeAddress to, TaskCompletionSource? sent)
    {
        if (!_sendQueue.Writer.TryWrite(new OutgoingDatagram(buffer, length, to, sent)))
        {
            ArrayPool<byte>.Shared.Return(buffer);
            sent?.TrySetResult();
        }
    }

    internal NativeAddress GetAddress(IPEndPoint endPoint)
    {
        var sa = endPoint.Serialize();
        if (_addresses.TryGetValue(sa, out var known))
        {
            return known;
        }

        if (_addresses.Count > MaxAddressCache)
        {
            _addresses.Clear();
        }

        var created = new NativeAddress(endPoint);
        return _addresses.GetOrAdd(sa, created);
    }

    private NativeAddress GetAddress(SocketAddress received)
    {
        if (_addresses.TryGetValue(received, out var known))
        {
            return known;
        }

        var ep = (IPEndPoint)_local.EndPoint.Create(received);
        return GetAddress(ep);
    }

    private async Task ReceiveLoopAsync()
    {
        var buffer = GC.AllocateUninitializedArray<byte>(MaxDatagram, pinned: true);
        var from = new SocketAddress(_socket.AddressFamily);
        var ct = _cts.Token;
        while (!ct.IsCancellationRequested)
        {
            int n;
            try
            {
                n = await _socket.ReceiveFromAsync(buffer, SocketFlags.None, from, ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }
            catch (ObjectDisposedException)
            {
                break;
            }
            catch (SocketException)
            {
                // ICMP errors surface here on some systems; the next datagram is unaffected.
                continue;
            }

            try
            {
                Dispatch(buffer.AsSpan(0, n), _local, GetAddress(from), fromSocket: true, null);
            }
            catch (Exception e)
            {
                // One malformed or unlucky datagram must not stop the endpoint.
                QuicLog.DispatchFailed(Logger, null, e);
            }
        }
    }

    private unsafe void Dispatch(ReadOnlySpan<byte> datagram, NativeAddress local, NativeAddress remote, bool fromSocket, List<QuicConnection>? deferred)
    {
        if (datagram.IsEmpty)
        {
            return;
        }

        if (datagram[0] <= 3)
        {
            // ngtcp2 0.12 always lets its peer grease the QUIC bit (RFC 9287), so a short-header packet can start
            // with 0..3 too. Such a packet carries one of our 18-byte connection IDs right after the first byte;
            // a STUN message would have to match one by chance.
            var greasedKey = datagram.Length > 1 + QuicConnection.CidLength ? CidKey.From(datagram.Slice(1, QuicConnection.CidLength)) : default;
            if (greasedKey.Length != 0 && _connections.TryGetValue(greasedKey, out var greased))
            {
                greased.OnDatagram(datagram, local, remote, deferred);
            }
            else if (greasedKey.Length != 0 && _closing.TryGetValue(greasedKey, out var closingGreased))
            {
                RepeatClose(closingGreased);
            }
            else if (_nonQuicHandler is { } handler && fromSocket)
            {
                handler(datagram.ToArray(), remote.EndPoint);
            }

            return;
        }

        ngtcp2_version_cid vc;
        int rv;
        fixed (byte* p = datagram)
        {
            rv = Ngtcp2.ngtcp2_pkt_decode_version_cid(&vc, p, (nuint)datagram.Length, QuicConnection.CidLength);
        }

        if (rv == NGTCP2_ERR_VERSION_NEGOTIATION)
        {
            SendVersionNegotiation(datagram, vc, local, remote);
            return;
        }

        if (rv != 0)
        {
            return;
        }

        var key = CidKey.From(new ReadOnlySpan<byte>(vc.dcid, (int)vc.dcidlen));
        if (_connections.TryGetValue(key, out var connection))
        {
            connection.OnDatagram(datagram, local, remote, deferred);
            return;
        }

        if (_closing.TryGetValue(key, out var closing))
        {
            RepeatClose(closing);
            return;
        }

        if ((datagram[0] & 0x80) == 0)
        {
            // A stateless reset has random bytes where the CID would be, so it cannot be routed by CID: offer it to
            // the connections talking to that address (ngtcp2 checks the token). Otherwise the sender lost state we
            // never had, or we lost state it still has: tell it with a stateless reset of our own.
            bool offered = false;
            foreach (var candidate in _connections.Values.Distinct())
            {
                if (candidate.RemoteEndPoint.Equals(remote.EndPoint))
                {
                    candidate.OnDatagram(datagram, local, remote);
                    offered = true;
                }
            }

            if (!offered)
            {
                SendStatelessReset(datagram, vc, local, remote);
            }

            return;
        }

        if (_serverTls is null || _disposed != 0 || _connections.Count >= MaxConnections)
        {
            return;
        }

        // The header (and its token) points into the datagram, so it stays pinned until the connection exists.
        ngtcp2_pkt_hd hd;
        fixed (byte* p = datagram)
        {
            if (Ngtcp2.ngtcp2_accept(&hd, p, (nuint)datagram.Length) != 0)
            {
                return;
            }

            ngtcp2_cid originalDcid = default;
            bool retried = false;
            if (_validateAddresses)
            {
                if (hd.type != NGTCP2_PKT_INITIAL)
                {
                    return; // 0-RTT before the address is validated
                }

                if (hd.token.len == 0 || hd.token.@base[0] != NGTCP2_CRYPTO_TOKEN_MAGIC_RETRY)
                {
                    SendRetry(hd, local, remote);
                    return;
                }

                fixed (byte* tokenKey = _tokenKey)
                {
                    if (Ngtcp2Crypto.ngtcp2_crypto_verify_retry_token(&originalDcid, hd.token.@base, hd.token.len, tokenKey, (nuint)_tokenKey.Length,
                        hd.version, remote.Pointer, remote.Length, &hd.dcid, 10 * NGTCP2_SECONDS, Clock.NowNs()) != 0)
                    {
                        return; // forged, expired or from another address: ignore rather than amplify
                    }
                }

                retried = true;
            }

            var accepted = QuicConnection.AcceptInitial(this, _serverTls, _serverOptions, local, remote, hd, retried ? originalDcid : null);
            accepted?.OnDatagram(datagram, local, remote);
        }
    }

    /// <summary>Answers a peer that missed our CONNECTION_CLOSE; at most once per 20 ms however much it sends.</summary>
    private void RepeatClose(ClosingConnection closing)
    {
        long now = Environment.TickCount64;
        long last = Volatile.Read(ref closing.LastSentMs);
        if (now - last >= 20 && Interlocked.CompareExchange(ref closing.LastSentMs, now, last) == last)
        {
            var copy = ArrayPool<byte>.Shared.Rent(closing.Packet.Length);
            closing.Packet.CopyTo(copy, 0);
            (closing.Local.Sink ?? this).EnqueueSend(copy, closing.Packet.Length, closing.Remote, null);
        }
    }

    /// <summary>Asks a new client to prove its address by echoing a token bound to it.</summary>
    private unsafe void SendRetry(in ngtcp2_pkt_hd hd, NativeAddress local, NativeAddress remote)
    {
        if (!TakeResetBudget())
        {
            return;
        }

        var retryScid = new ngtcp2_cid { datalen = QuicConnection.CidLength };
        RandomNumberGenerator.Fill(new Span<byte>(retryScid.data, QuicConnection.CidLength));
        byte* token = stackalloc byte[NGTCP2_CRYPTO_MAX_RETRY_TOKENLEN];
        var dcid = hd.dcid;
        var scid = hd.scid;
        nint tokenLength;
        fixed (byte* key = _tokenKey)
        {
            tokenLength = Ngtcp2Crypto.ngtcp2_crypto_generate_retry_token(token, key, (nuint)_tokenKey.Length, hd.version,
                remote.Pointer, remote.Length, &retryScid, &dcid, Clock.NowNs());
        }

        if (tokenLength < 0)
        {
            return;
        }

        var buffer = ArrayPool<byte>.Shared.Rent(256);
        nint n;
        fixed (byte* dest = buffer)
        {
            n = Ngtcp2Crypto.ngtcp2_crypto_write_retry(dest, (nuint)buffer.Length, hd.version, &scid, &retryScid, &dcid, token, (nuint)tokenLength);
        }

        if (n > 0)
        {
            QuicLog.StatelessReply(Logger, "Retry", remote.EndPoint);
            (local.Sink ?? this).EnqueueSend(buffer, (int)n, remote, null);
        }
        else
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>A short-header packet for a connection we do not know (for example after a restart).</summary>
    private unsafe void SendStatelessReset(ReadOnlySpan<byte> datagram, in ngtcp2_version_cid vc, NativeAddress local, NativeAddress remote)
    {
        // RFC 9000 §10.3: smaller than what triggered it (no reset loops), at least 21 bytes, and rate-limited.
        int randLength = Math.Min(datagram.Length - 1 - 1 - NGTCP2_STATELESS_RESET_TOKENLEN, 40);
        if ((int)vc.dcidlen != QuicConnection.CidLength || randLength < NGTCP2_MIN_STATELESS_RESET_RANDLEN || !TakeResetBudget())
        {
            return;
        }

        var cid = new ngtcp2_cid { datalen = vc.dcidlen };
        new ReadOnlySpan<byte>(vc.dcid, (int)vc.dcidlen).CopyTo(new Span<byte>(cid.data, 20));
        byte* token = stackalloc byte[NGTCP2_STATELESS_RESET_TOKENLEN];
        MakeStatelessResetToken(&cid, token);
        byte* rand = stackalloc byte[randLength];
        RandomNumberGenerator.Fill(new Span<byte>(rand, randLength));
        var buffer = ArrayPool<byte>.Shared.Rent(128);
        nint n;
        fixed (byte* dest = buffer)
        {
            n = Ngtcp2.ngtcp2_pkt_write_stateless_reset(dest, (nuint)buffer.Length, token, rand, (nuint)randLength);
        }

        if (n > 0)
        {
            QuicLog.StatelessReply(Logger, "stateless reset", remote.EndPoint);
            (local.Sink ?? this).EnqueueSend(buffer, (int)n, remote, null);
        }
        else
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>An Initial of a version we do not speak: tell the client we speak QUIC v1.</summary>
    private unsafe void SendVersionNegotiation(ReadOnlySpan<byte> datagram, in ngtcp2_version_cid vc, NativeAddress local, NativeAddress remote)
    {
        // Only for datagrams as large as a real Initial (1200 bytes), so the reply cannot amplify.
        if (_serverTls is null || datagram.Length < NGTCP2_MAX_UDP_PAYLOAD_SIZE || !TakeResetBudget())
        {
            return;
        }

        uint v1 = NGTCP2_PROTO_VER_V1;
        var buffer = ArrayPool<byte>.Shared.Rent(256);
        nint n;
        fixed (byte* dest = buffer)
        {
            n = Ngtcp2.ngtcp2_pkt_write_version_negotiation(dest, (nuint)buffer.Length, (byte)RandomNumberGenerator.GetInt32(256),
                vc.scid, vc.scidlen, vc.dcid, vc.dcidlen, &v1, 1);
        }

        if (n > 0)
        {
            QuicLog.StatelessReply(Logger, "version negotiation", remote.EndPoint);
            (local.Sink ?? this).EnqueueSend(buffer, (int)n, remote, null);
        }
        else
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>At most 100 stateless replies per second, so spoofed traffic cannot turn the endpoint into a reflector.</summary>
    private bool TakeResetBudget()
    {
        long now = Environment.TickCount64;
        if (now - _resetWindowStartMs >= 1000)
        {
            _resetWindowStartMs = now;
            _resetsInWindow = 0;
        }

        return ++_resetsInWindow <= 100;
    }

    private async Task SendLoopAsync()
    {
        var reader = _sendQueue.Reader;
        while (await reader.WaitToReadAsync().ConfigureAwait(false))
        {
            while (reader.TryRead(out var d))
            {
                try
                {
                    if (SendFilter is { } filter && !filter(d.Buffer.AsMemory(0, d.Length), d.To.EndPoint))
                    {
                        continue;
                    }

                    if (_io is not null && d.To.Length == _local.Length)
                    {
                        SendNative(d.Buffer, d.Length, d.To);
                    }
                    else if (_io is not null)
                    {
                        // Sync on purpose: an async socket call would switch the descriptor the receive thread blocks on to non-blocking.
                        _socket.SendTo(d.Buffer.AsSpan(0, d.Length), SocketFlags.None, d.To.SocketAddress);
                    }
                    else
                    {
                        await _socket.SendToAsync(d.Buffer.AsMemory(0, d.Length), SocketFlags.None, d.To.SocketAddress).ConfigureAwait(false);
                    }
                }
                catch (SocketException)
                {
                    // A lost datagram is QUIC's normal business; recovery resends what mattered.
                }
                catch (ObjectDisposedException)
                {
                    // Shutting down.
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(d.Buffer);
                    d.Sent?.TrySetResult();
                }
            }
        }
    }

    private unsafe void SendNative(byte[] buffer, int length, NativeAddress to)
    {
        fixed (byte* p = buffer)
        {
            _io!.Send([new OutgoingPacket((nint)p, length, to)]);
        }
    }

    private sealed class ClosingConnection(byte[] packet, NativeAddress local, NativeAddress remote)
    {
        public long LastSentMs = Environment.TickCount64;

        public byte[] Packet { get; } = packet;

        public NativeAddress Local { get; } = local;

        public NativeAddress Remote { get; } = remote;
    }

    private readonly record struct OutgoingDatagram(byte[] Buffer, int Length, NativeAddress To, TaskCompletionSource? Sent);
}

using System.Net;
using System.Runtime.InteropServices;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Threading.Channels;
using Ferry.Quic.Interop;
using Ferry.Quic.Internal;
using static Ferry.Quic.Interop.Ngtcp2Const;

namespace Ferry.Quic;

/// <summary>A QUIC connection over an endpoint's socket: mutual TLS 1.3, streams, graceful close.</summary>
/// <remarks>
/// Every ngtcp2 call and every piece of stream state is guarded by one lock per connection; ngtcp2 runs
/// its callbacks synchronously inside those calls, so callbacks find the lock already held. Nothing is
/// awaited while the lock is held, and waiters are woken with RunContinuationsAsynchronously.
/// </remarks>
public sealed partial class QuicConnection : IAsyncDisposable
{
    internal const int CidLength = 18;
    private const int MaxPacketsPerFlush = UdpBatchIo.MaxBatch;
    private const int PacketBufferSize = PacketBatch.SlotSize;

    internal readonly Lock _lock = new();
    private QuicEndpoint _endpoint;
    private readonly TlsContext _tls;
    private readonly bool _ownsTls;
    private readonly QuicConnectionOptions _options;
    private readonly Dictionary<long, QuicStream> _streams = [];
    private readonly Queue<QuicStream> _pending = new();
    private readonly List<QuicStream> _blocked = [];
    private readonly Channel<QuicStream> _incoming = Channel.CreateUnbounded<QuicStream>(new UnboundedChannelOptions { SingleWriter = true });
    private readonly Channel<byte[]> _datagrams;
    private readonly Queue<byte[]> _outgoingDatagrams = new();
    private readonly TaskCompletionSource _handshake = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _terminated = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<CidKey> _cids = [];
    private readonly List<QuicEndpoint> _endpoints = [];
    private readonly List<NativeAddress> _locals = [];
    private TaskCompletionSource<bool>? _migration;
    private NativeAddress? _migrationRemote;
    private readonly Timer _timer;
    private GCHandle _self;
    private unsafe ngtcp2_crypto_conn_ref* _connRef;
    private SafeNgtcp2ConnHandle? _conn;
    private SafeGnuTlsSessionHandle? _session;
    private nint _c;
    private NativeAddress _remote;
    private NativeAddress _local;
    private TaskCompletionSource? _streamCredit;
    private Exception? _terminal;
    private Exception? _callbackError;
    private bool _handshakeCompletedPending;
    private bool _handshakeConfirmedPending;
    private bool _handshakeConfirmed;
    private bool _handshakeDone;
    private bool _released;
    private bool _flushScheduled;
    private bool _flushDeferred;
    private PoolFlush? _poolFlush;
    private ulong _armedExpiry = ulong.MaxValue;
    private byte[]? _closePacket;
    private bool _statelessReset;
    private bool _endLogged;

    private unsafe QuicConnection(QuicEndpoint endpoint, TlsContext tls, bool ownsTls, QuicConnectionOptions options, NativeAddress local, NativeAddress remote)
    {
        _endpoint = endpoint;
        _tls = tls;
        _ownsTls = ownsTls;
        _options = options;
        _local = local;
        _remote = remote;
        _locals.Add(local);
        _endpoints.Add(endpoint);
        _datagrams = Channel.CreateBounded<byte[]>(new BoundedChannelOptions(Math.Max(1, options.DatagramReceiveQueueLength))
        {
            FullMode = BoundedChannelFullMode.DropOldest,
            SingleWriter = true,
        });
        _timer = new Timer(static s => ((QuicConnection)s!).OnTimer(), this, Timeout.Infinite, Timeout.Infinite);
        _self = GCHandle.Alloc(this);
        _connRef = (ngtcp2_crypto_conn_ref*)NativeMemory.AllocZeroed((nuint)sizeof(ngtcp2_crypto_conn_ref));
        _connRef->get_conn = (delegate* unmanaged<ngtcp2_crypto_conn_ref*, nint>)&NativeCallbacks.GetConn;
        _connRef->user_data = (void*)GCHandle.ToIntPtr(_self);
    }

    /// <summary>True for the side that accepted the connection.</summary>
    public bool IsServer => _tls.IsServer;

    /// <summary>The peer's current address.</summary>
    public IPEndPoint RemoteEndPoint => _remote.EndPoint;

    /// <summary>The local socket address.</summary>
    public IPEndPoint LocalEndPoint => _local.EndPoint;

    /// <summary>The ALPN protocol both sides agreed on.</summary>
    public string NegotiatedApplicationProtocol { get; private set; } = "";

    /// <summary>The peer's leaf certificate, verified against the trusted CA during the handshake.</summary>
    public X509Certificate2? RemoteCertificate { get; private set; }

    /// <summary>The peer's identity: the Subject CN of its certificate.</summary>
    public string? RemoteIdentity { get; private set; }

    /// <summary>Completes when the connection has ended, for whatever reason; never faults.</summary>
    public Task Closed => _terminated.Task;

    internal IEnumerable<CidKey> ConnectionIds => _cids;

    internal static async ValueTask<QuicConnection> ConnectAsync(QuicEndpoint endpoint, NativeAddress local, NativeAddress remote, QuicTlsOptions tlsOptions, QuicConnectionOptions options, CancellationToken cancellationToken)
    {
        var tls = new TlsContext(tlsOptions, isServer: false);
        QuicConnection connection;
        try
        {
            connection = new QuicConnection(endpoint, tls, ownsTls: true, options, local, remote);
        }
        catch
        {
            tls.Dispose();
            throw;
        }

        try
        {
            connection.InitClient();
        }
        catch
        {
            connection.Abandon();
            throw;
        }

        try
        {
            await connection._handshake.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            connection.Abandon();
            throw;
        }

        return connection;
    }

    internal static QuicConnection? AcceptInitial(QuicEndpoint endpoint, TlsContext tls, QuicConnectionOptions options, NativeAddress local, NativeAddress remote, in ngtcp2_pkt_hd hd, ngtcp2_cid? originalDcidBeforeRetry)
    {
        var connection = new QuicConnection(endpoint, tls, ownsTls: false, options, local, remote);
        try
        {
            connection.InitServer(hd, originalDcidBeforeRetry);
            return connection;
        }
        catch
        {
            connection.Abandon();
            return null;
        }
    }

    /// <summary>Opens a bidirectional stream, waiting while the peer's stream limit is reached.</summary>
    public ValueTask<QuicStream> OpenBidirectionalStreamAsync(CancellationToken cancellationToken = default) => OpenStreamAsync(bidirectional: true, cancellationToken);

    /// <summary>Opens a send-only stream, waiting while the peer's stream limit is reached.</summary>
    public ValueTask<QuicStream> OpenUnidirectionalStreamAsync(CancellationToken cancellationToken = default) => OpenStreamAsync(bidirectional: false, cancellationToken);

    /// <summary>Waits for the next stream the peer opens.</summary>
    public async ValueTask<QuicStream> AcceptStreamAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            return await _incoming.Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            throw TerminalException();
        }
    }

    /// <summary>Closes the connection, sending the peer an application error code and reason.</summary>
    public async ValueTask CloseAsync(long errorCode, string? reason = null, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(errorCode);
        Task? sent;
        lock (_lock)
        {
            if (_terminal is not null)
            {
                return;
            }

            sent = SendApplicationCloseLocked(errorCode, reason);
            TerminateLocked(new QuicException(QuicError.OperationAborted, $"The connection was closed locally with error code {errorCode}.", errorCode));
        }

        if (sent is not null)
        {
            await sent.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Closes with error code 0 if still open and frees native resources.</summary>
    public async ValueTask DisposeAsync()
    {
        try
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            await CloseAsync(0, null, cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // The close packet could not be sent in time; the peer will time out instead.
        }
    }

    private unsafe Task? SendApplicationCloseLocked(long errorCode, string? reason)
    {
        var bytes = reason is null ? [] : Encoding.UTF8.GetBytes(reason);
        ngtcp2_connection_close_error ccerr;
        fixed (byte* r = bytes)
        {
            Ngtcp2.ngtcp2_connection_close_error_set_application_error(&ccerr, (ulong)errorCode, r, (nuint)bytes.Length);
            return SendCloseLocked(&ccerr);
        }
    }

    private unsafe int OpenStreamLocked(bool bidirectional, out long id)
    {
        long sid;
        int rv = bidirectional
            ? Ngtcp2.ngtcp2_conn_open_bidi_stream(_c, &sid, null)
            : Ngtcp2.ngtcp2_conn_open_uni_stream(_c, &sid, null);
        id = sid;
        return rv;
    }

    private async ValueTask<QuicStream> OpenStreamAsync(bool bidirectional, CancellationToken cancellationToken)
    {
        // Each pass either completes or waits for a state change; connection teardown wakes every waiter.
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                ThrowIfTerminalLocked();
                int rv = OpenStreamLocked(bidirectional, out long id);
                if (rv == 0)
                {
                    var stream = new QuicStream(this, id, canRead: bidirectional, canWrite: true, _options.StreamSendBufferSize);
                    _streams.Add(id, stream);
                    return stream;
                }

                if (rv != NGTCP2_ERR_STREAM_ID_BLOCKED)
                {
                    throw new QuicException(QuicError.InternalError, "Opening a stream failed: " + Ngtcp2.StrError(rv));
                }

                _streamCredit ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = _streamCredit.Task;
            }

            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private unsafe void InitClient()
    {
        Span<byte> dcidBytes = stackalloc byte[CidLength];
        RandomNumberGenerator.Fill(dcidBytes);
        var dcid = MakeCid(dcidBytes);
        var scid = NewScid();
        var path = new ngtcp2_path { local = _local.ToAddr(), remote = _remote.ToAddr() };
        var settings = MakeSettings();
        var tp = MakeTransportParams();
        var callbacks = NativeCallbacks.Client;
        nint conn;
        int rv = Ngtcp2.ngtcp2_conn_client_new_versioned(&conn, &dcid, &scid, &path, NGTCP2_PROTO_VER_V1,
            NGTCP2_CALLBACKS_VERSION, &callbacks, NGTCP2_SETTINGS_VERSION, &settings,
            NGTCP2_TRANSPORT_PARAMS_VERSION, &tp, null, (void*)GCHandle.ToIntPtr(_self));
        if (rv != 0)
        {
            throw new QuicException(QuicError.InternalError, "ngtcp2_conn_client_new failed: " + Ngtcp2.StrError(rv));
        }

        AttachNative(conn);
        lock (_lock)
        {
            RegisterCid(CidKey.From(scid));
            FlushLocked();
            ArmTimerLocked();
        }
    }

    private unsafe void InitServer(in ngtcp2_pkt_hd hd, ngtcp2_cid? originalDcidBeforeRetry)
    {
        var scid = NewScid();
        var path = new ngtcp2_path { local = _local.ToAddr(), remote = _remote.ToAddr() };
        var settings = MakeSettings();
        var tp = MakeTransportParams();
        tp.original_dcid = hd.dcid;
        if (originalDcidBeforeRetry is { } odcid)
        {
            // After a Retry the client's DCID is the one we picked; the transport parameters must prove both.
            tp.original_dcid = odcid;
            tp.retry_scid = hd.dcid;
            tp.retry_scid_present = 1;
            settings.token = hd.token;
        }

        // Lets the client recognise a stateless reset from us even before it uses a NEW_CONNECTION_ID.
        _endpoint.MakeStatelessResetToken(&scid, tp.stateless_reset_token);
        tp.stateless_reset_token_present = 1;
        var callbacks = NativeCallbacks.Server;
        var clientScid = hd.scid;
        nint conn;
        int rv = Ngtcp2.ngtcp2_conn_server_new_versioned(&conn, &clientScid, &scid, &path, hd.version,
            NGTCP2_CALLBACKS_VERSION, &callbacks, NGTCP2_SETTINGS_VERSION, &settings,
            NGTCP2_TRANSPORT_PARAMS_VERSION, &tp, null, (void*)GCHandle.ToIntPtr(_self));
        if (rv != 0)
        {
            throw new QuicException(QuicError.InternalError, "ngtcp2_conn_server_new failed: " + Ngtcp2.StrError(rv));
        }

        AttachNative(conn);
        lock (_lock)
        {
            // The client keeps using its chosen DCID until it sees our SCID, so both must route here.
            RegisterCid(CidKey.From(hd.dcid));
            RegisterCid(CidKey.From(scid));
        }
    }

    private unsafe void AttachNative(nint conn)
    {
        _conn = new SafeNgtcp2ConnHandle(conn);
        _c = conn;
        _session = _tls.CreateSession(_connRef);
        _conn.SetSession(_session);
        Ngtcp2.ngtcp2_conn_set_tls_native_handle(conn, _session.DangerousGetHandle());
        if (_options.KeepAliveInterval is { } keepAlive)
        {
            Ngtcp2.ngtcp2_conn_set_keep_alive_timeout(conn, ToNs(keepAlive));
        }
    }

    private unsafe ngtcp2_settings MakeSettings()
    {
        ngtcp2_settings settings;
        Ngtcp2.ngtcp2_settings_default_versioned(NGTCP2_SETTINGS_VERSION, &settings);
        settings.initial_ts = Clock.NowNs();
        settings.handshake_timeout = ToNs(_options.HandshakeTimeout);
        settings.max_window = 32 << 20;
        settings.max_stream_window = 16 << 20;
        settings.cc_algo = _options.CongestionControl switch
        {
            QuicCongestionControl.Reno => NGTCP2_CC_ALGO_RENO,
            QuicCongestionControl.Bbr => NGTCP2_CC_ALGO_BBR,
            QuicCongestionControl.Bbr2 => NGTCP2_CC_ALGO_BBR2,
            _ => NGTCP2_CC_ALGO_CUBIC,
        };
        return settings;
    }

    private unsafe ngtcp2_transport_params MakeTransportParams()
    {
        ngtcp2_transport_params tp;
        Ngtcp2.ngtcp2_transport_params_default_versioned(NGTCP2_TRANSPORT_PARAMS_VERSION, &tp);
        tp.initial_max_streams_bidi = (ulong)_options.MaxInboundBidirectionalStreams;
        tp.initial_max_streams_uni = (ulong)_options.MaxInboundUnidirectionalStreams;
        tp.initial_max_stream_data_bidi_local = (ulong)_options.StreamReceiveWindow;
        tp.initial_max_stream_data_bidi_remote = (ulong)_options.StreamReceiveWindow;
        tp.initial_max_stream_data_uni = (ulong)_options.StreamReceiveWindow;
        tp.initial_max_data = (ulong)_options.ConnectionReceiveWindow;
        tp.max_idle_timeout = ToNs(_options.IdleTimeout);
        tp.max_datagram_frame_size = (ulong)_options.MaxDatagramFrameSize;
        // Every move between a relayed and a direct path uses a fresh connection ID on each side; with ngtcp2's default of 2
        // a quick move back (direct → relay → direct) finds no spare ID and the peer silently drops the packets.
        tp.active_connection_id_limit = 8;
        return tp;
    }

    private static ulong ToNs(TimeSpan t) => (ulong)t.Ticks * 100;

    private unsafe static ngtcp2_cid MakeCid(ReadOnlySpan<byte> bytes)
    {
        var cid = new ngtcp2_cid { datalen = (nuint)bytes.Length };
        bytes.CopyTo(new Span<byte>(cid.data, 20));
        return cid;
    }

    private unsafe static ngtcp2_cid NewScid()
    {
        Span<byte> bytes = stackalloc byte[CidLength];
        RandomNumberGenerator.Fill(bytes);
        return MakeCid(bytes);
    }

    private void RegisterCid(CidKey key)
    {
        _cids.Add(key);
        foreach (var endpoint in _endpoints)
        {
            endpoint.Register(key, this);
        }
    }

    private void UnregisterCid(CidKey key)
    {
        _cids.Remove(key);
        foreach (var endpoint in _endpoints)
        {
            endpoint.Unregister(key, this);
        }
    }

    /// <summary>
    /// One datagram from the receive loop. With <paramref name="deferred"/> the flush waits for the end of the receive
    /// batch (see <see cref="FlushDeferred"/>), so a burst of packets is answered with one batch of ACKs and data.
    /// </summary>
    internal unsafe void OnDatagram(ReadOnlySpan<byte> datagram, NativeAddress local, NativeAddress remote, List<QuicConnection>? deferred = null)
    {
        lock (_lock)
        {
            if (_terminal is not null)
            {
                return;
            }

            _bytesReceived += datagram.Length;
            if (!_locals.Contains(local) && _locals.Count < 16)
            {
                _locals.Add(local); // a new local address (relay path, other socket): remember where its packets go
            }

            var path = new ngtcp2_path { local = local.ToAddr(), remote = remote.ToAddr() };
            var pi = default(ngtcp2_pkt_info);
            int rv;
            fixed (byte* p = datagram)
            {
                rv = Ngtcp2.ngtcp2_conn_read_pkt_versioned(_c, &path, NGTCP2_PKT_INFO_VERSION, &pi, p, (nuint)datagram.Length, Clock.NowNs());
            }

            if (rv != 0)
            {
                HandleErrorLocked(rv);
                return;
            }

            Volatile.Write(ref _lastReceived, System.Diagnostics.Stopwatch.GetTimestamp());
            if (_handshakeCompletedPending)
            {
                _handshakeCompletedPending = false;
                OnHandshakeCompletedLocked();
                if (_terminal is not null)
                {
                    return;
                }
            }

            // A TLS 1.3 client finishes before the server has checked the client certificate; only the
            // server's HANDSHAKE_DONE (handshake confirmed) proves the server accepted us.
            if (_handshakeConfirmedPending && _handshakeDone)
            {
                _handshakeConfirmedPending = false;
                OnHandshakeConfirmedLocked();
                if (_terminal is not null)
                {
                    return;
                }
            }

            TrackCurrentPathLocked();

            // A MAX_DATA or MAX_STREAM_DATA may have arrived; let blocked streams try again.
            foreach (var s in _blocked)
            {
                EnqueuePendingLocked(s, force: true);
            }

            _blocked.Clear();
            if (deferred is not null)
            {
                if (!_flushDeferred)
                {
                    _flushDeferred = true;
                    deferred.Add(this);
                }

                return;
            }

            FlushLocked();
            ArmTimerLocked();
        }
    }

    /// <summary>The end of a receive batch that delivered datagrams to this connection.</summary>
    internal void FlushDeferred()
    {
        lock (_lock)
        {
            _flushDeferred = false;
            if (_terminal is null)
            {
                FlushLocked();
                ArmTimerLocked();
            }
        }
    }

    private unsafe void OnHandshakeCompletedLocked()
    {
        uint count;
        var peers = GnuTls.gnutls_certificate_get_peers(_session!.DangerousGetHandle(), &count);
        if (peers is not null && count > 0)
        {
            RemoteCertificate = X509CertificateLoader.LoadCertificate(new ReadOnlySpan<byte>(peers[0].data, (int)peers[0].size));
            RemoteIdentity = RemoteCertificate.GetNameInfo(X509NameType.SimpleName, forIssuer: false);
        }

        gnutls_datum_t alpn;
        if (GnuTls.gnutls_alpn_get_selected_protocol(_session.DangerousGetHandle(), &alpn) == 0)
        {
            NegotiatedApplicationProtocol = Encoding.ASCII.GetString(alpn.data, (int)alpn.size);
        }

        // GnuTLS already verified any chain it received; this only guards against a peer that sent none.
        if (RemoteCertificate is null && (!IsServer || _tls.Options.RequirePeerCertificate))
        {
            var failure = new AuthenticationException("The peer presented no certificate.");
            LogEndLocked(failure);
            ngtcp2_connection_close_error ccerr;
            Ngtcp2.ngtcp2_connection_close_error_set_transport_error_tls_alert(&ccerr, 116 /* certificate_required */, null, 0);
            SendCloseLocked(&ccerr);
            TerminateLocked(failure);
            return;
        }

        _handshakeDone = true;
    }

    private unsafe void OnHandshakeConfirmedLocked()
    {
        _handshakeConfirmed = true;
        if (IsServer)
        {
            if (!_endpoint.EnqueueAccepted(this))
            {
                ngtcp2_connection_close_error ccerr;
                Ngtcp2.ngtcp2_connection_close_error_set_transport_error_liberr(&ccerr, NGTCP2_ERR_CALLBACK_FAILURE, null, 0);
                SendCloseLocked(&ccerr);
                TerminateLocked(new QuicException(QuicError.OperationAborted, "The accept queue is full."));
                return;
            }
        }

        QuicLog.ConnectionEstablished(_endpoint.Logger, IsServer ? "from" : "to", _remote.EndPoint, RemoteIdentity, NegotiatedApplicationProtocol);
        _handshake.TrySetResult();
    }

    private void OnTimer()
    {
        lock (_lock)
        {
            if (_terminal is not null)
            {
                return;
            }

            _armedExpiry = ulong.MaxValue;
            int rv = Ngtcp2.ngtcp2_conn_handle_expiry(_c, Clock.NowNs());
            if (rv != 0)
            {
                HandleErrorLocked(rv);
                return;
            }

            FlushLocked();
            ArmTimerLocked();
        }
    }

    private void ArmTimerLocked()
    {
        if (_terminal is not null)
        {
            return;
        }

        ulong expiry = Ngtcp2.ngtcp2_conn_get_expiry(_c);
        if (expiry == _armedExpiry)
        {
            return;
        }

        _armedExpiry = expiry;
        if (expiry == ulong.MaxValue)
        {
            _timer.Change(Timeout.Infinite, Timeout.Infinite);
            return;
        }

        ulong now = Clock.NowNs();
        long ms = expiry <= now ? 0 : (long)((expiry - now + 999_999) / 1_000_000);
        _timer.Change(ms, Timeout.Infinite);
    }

    internal void EnqueuePendingLocked(QuicStream stream, bool force = false)
    {
        if ((!stream.InPending || force) && stream.HasSomethingToSendLocked)
        {
            if (!stream.InPending)
            {
                _pending.Enqueue(stream);
            }

            stream.InPending = true;
        }
    }

    /// <summary>Writes every packet ngtcp2 has ready (stream data, ACKs, control frames) into the send queue.</summary>
    internal unsafe void FlushLocked()
    {
        if (_terminal is not null)
        {
            return;
        }

        ngtcp2_path_storage ps;
        var vecs = stackalloc ngtcp2_vec[16];
        var batch = PacketBatch.Rent();
        int packets = 0;
        ulong now = Clock.NowNs();
        nuint maxSize = Math.Min(Ngtcp2.ngtcp2_conn_get_max_tx_udp_payload_size(_c), (nuint)PacketBufferSize);
        try
        {
            // Datagrams first: they are latency-sensitive and never wait for retransmission.
            bool datagramRefused = false;
            while (_outgoingDatagrams.Count > 0 && packets < MaxPacketsPerFlush)
            {
                var datagram = _outgoingDatagrams.Peek();
                ps = default;
                ps.path.local.addr = &ps.local_addrbuf;
                ps.path.remote.addr = &ps.remote_addrbuf;
                var dpi = default(ngtcp2_pkt_info);
                int accepted = 0;
                nint written;
                fixed (byte* src = datagram)
                {
                    var vec = new ngtcp2_vec { @base = src, len = (nuint)datagram.Length };
                    written = Ngtcp2.ngtcp2_conn_writev_datagram_versioned(_c, &ps.path, NGTCP2_PKT_INFO_VERSION, &dpi, batch.NextSlot, maxSize,
                        &accepted, NGTCP2_WRITE_DATAGRAM_FLAG_NONE, 0, &vec, 1, now);
                }

                if (written < 0)
                {
                    if (written is NGTCP2_ERR_INVALID_STATE or NGTCP2_ERR_INVALID_ARGUMENT)
                    {
                        _outgoingDatagrams.Dequeue(); // peer cannot take it; unreliable by contract
                        continue;
                    }

                    HandleErrorLocked((int)written);
                    return;
                }

                if (written == 0)
                {
                    break; // congestion-limited: keep it for the next flush
                }

                // Not accepted: the packet filled up with other frames first. Retry once in a fresh packet; if
                // it is refused again it cannot fit this path at all, so drop it rather than spin.
                if (accepted != 0 || datagramRefused)
                {
                    _outgoingDatagrams.Dequeue();
                    datagramRefused = false;
                }
                else
                {
                    datagramRefused = true;
                }

                AddLocked(batch, (int)written, ps.path);
                packets++;
            }

            while (packets < MaxPacketsPerFlush)
            {
                QuicStream? stream = _pending.Count > 0 ? _pending.Peek() : null;
                if (stream is { IsSendReleasedLocked: true })
                {
                    // Closed (its send buffer freed) while it waited in the queue; there is nothing left of it to send.
                    _pending.Dequeue();
                    stream.InPending = false;
                    continue;
                }

                int vecCount = 0;
                long total = 0;
                uint flags = NGTCP2_WRITE_STREAM_FLAG_NONE;
                bool fin = false;
                bool probe = false;
                if (stream is not null)
                {
                    vecCount = stream.GetUnsentLocked(new Span<ngtcp2_vec>(vecs, 16), out total, out fin);
                    probe = vecCount == 0 && !fin;

                    // No MORE flag on a probe: with nothing to add ngtcp2 could keep answering WRITE_MORE.
                    flags = (probe ? 0 : NGTCP2_WRITE_STREAM_FLAG_MORE) | (fin ? NGTCP2_WRITE_STREAM_FLAG_FIN : 0);
                }

                ps = default;
                ps.path.local.addr = &ps.local_addrbuf;
                ps.path.remote.addr = &ps.remote_addrbuf;
                var pi = default(ngtcp2_pkt_info);
                nint datalen = -1;
                nint nwrite;
                nwrite = Ngtcp2.ngtcp2_conn_writev_stream_versioned(_c, &ps.path, NGTCP2_PKT_INFO_VERSION, &pi, batch.NextSlot, maxSize,
                    &datalen, flags, stream?.Id ?? -1, vecs, (nuint)vecCount, now);

                if (stream is not null && datalen >= 0)
                {
                    stream.OnSentLocked(datalen, fin && datalen == total);
                }

                if (nwrite < 0)
                {
                    switch ((int)nwrite)
                    {
                        case NGTCP2_ERR_WRITE_MORE:
                            RotateLocked(stream!);
                            continue;
                        case NGTCP2_ERR_STREAM_DATA_BLOCKED:
                            _pending.Dequeue();
                            stream!.InPending = false;
                            _blocked.Add(stream);
                            continue;
                        case NGTCP2_ERR_STREAM_SHUT_WR:
                        case NGTCP2_ERR_STREAM_NOT_FOUND:
                            _pending.Dequeue();
                            stream!.InPending = false;
                            stream.OnWriteShutLocked();
                            continue;
                        default:
                            HandleErrorLocked((int)nwrite);
                            return;
                    }
                }

                if (nwrite == 0 && probe)
                {
                    // The probe found the stream healthy and nothing else to send; other streams may still have data.
                    _pending.Dequeue();
                    stream!.InPending = false;
                    continue;
                }

                if (stream is not null)
                {
                    RotateLocked(stream);
                }

                if (nwrite == 0)
                {
                    break;
                }

                AddLocked(batch, (int)nwrite, ps.path);
                packets++;
            }
        }
        finally
        {
            SubmitLocked(batch);
            batch.Return();
        }

        // Pacing only once the handshake is confirmed: before any RTT sample ngtcp2 assumes 333 ms and spaces the client's
        // certificate and Finished ~22 ms apart, which made every new connection ~6x slower than TCP+TLS.
        if (_handshakeConfirmed)
        {
            Ngtcp2.ngtcp2_conn_update_pkt_tx_time(_c, now);
        }
        if (packets == MaxPacketsPerFlush && !_flushScheduled)
        {
            // Give the receive loop and other connections a turn; finish on the thread pool.
            _flushScheduled = true;
            ThreadPool.UnsafeQueueUserWorkItem(_poolFlush ??= new PoolFlush(this), preferLocal: false);
        }
    }

    /// <summary>The thread-pool continuation of a long flush, allocated once per connection.</summary>
    private sealed class PoolFlush(QuicConnection connection) : IThreadPoolWorkItem
    {
        public void Execute() => connection.FlushFromPool();
    }

    private void FlushFromPool()
    {
        lock (_lock)
        {
            _flushScheduled = false;
            if (_terminal is null)
            {
                FlushLocked();
                ArmTimerLocked();
            }
        }
    }

    private void RotateLocked(QuicStream stream)
    {
        // Round-robin: a stream with more to send goes to the back of the queue.
        if (_pending.Count > 0 && ReferenceEquals(_pending.Peek(), stream))
        {
            _pending.Dequeue();
            if (stream.HasSomethingToSendLocked)
            {
                _pending.Enqueue(stream);
            }
            else
            {
                stream.InPending = false;
            }
        }
    }

    /// <summary>Called by a stream after the application consumed received bytes, to open flow-control windows.</summary>
    internal void OnConsumedLocked(long streamId, int count)
    {
        if (_terminal is not null || count == 0)
        {
            return;
        }

        Ngtcp2.ngtcp2_conn_extend_max_stream_offset(_c, streamId, (ulong)count);
        Ngtcp2.ngtcp2_conn_extend_max_offset(_c, (ulong)count);
        FlushLocked();
        ArmTimerLocked();
    }

    internal void ShutdownStreamLocked(long streamId, bool read, bool write, long errorCode)
    {
        if (_terminal is not null)
        {
            return;
        }

        if (read)
        {
            Ngtcp2.ngtcp2_conn_shutdown_stream_read(_c, streamId, (ulong)errorCode);
        }

        if (write)
        {
            Ngtcp2.ngtcp2_conn_shutdown_stream_write(_c, streamId, (ulong)errorCode);
        }

        FlushLocked();
        ArmTimerLocked();
    }

    /// <summary>Look at this stream again when the next packet arrives (flow-control credit, STOP_SENDING).</summary>
    internal void RecheckLaterLocked(QuicStream stream)
    {
        if (!_blocked.Contains(stream))
        {
            _blocked.Add(stream);
        }
    }

    internal void AfterStreamWriteLocked(QuicStream stream)
    {
        EnqueuePendingLocked(stream);
        FlushLocked();
        ArmTimerLocked();
    }

    private unsafe Task? SendCloseLocked(ngtcp2_connection_close_error* ccerr)
    {
        if (_released || Ngtcp2.ngtcp2_conn_is_in_closing_period(_c) != 0 || Ngtcp2.ngtcp2_conn_is_in_draining_period(_c) != 0)
        {
            return null;
        }

        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(PacketBufferSize);
        ngtcp2_path_storage ps = default;
        ps.path.local.addr = &ps.local_addrbuf;
        ps.path.remote.addr = &ps.remote_addrbuf;
        var pi = default(ngtcp2_pkt_info);
        nint n;
        fixed (byte* dest = buffer)
        {
            n = Ngtcp2.ngtcp2_conn_write_connection_close_versioned(_c, &ps.path, NGTCP2_PKT_INFO_VERSION, &pi, dest,
                Math.Min(Ngtcp2.ngtcp2_conn_get_max_tx_udp_payload_size(_c), (nuint)PacketBufferSize), ccerr, Clock.NowNs());
        }

        if (n <= 0)
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
            return null;
        }

        _closePacket = buffer.AsSpan(0, (int)n).ToArray();
        var sent = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        SendLocked(buffer, (int)n, ps.path, sent);
        return sent.Task;
    }

    internal QuicStream? FindStreamLocked(long id) => _streams.GetValueOrDefault(id);
}


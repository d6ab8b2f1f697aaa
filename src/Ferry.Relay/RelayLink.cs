using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Ferry.Core.Security;

namespace Ferry.Relay;

/// <summary>A peer's authenticated TLS link to one relay: binds tickets, sends and receives opaque packets, keeps itself alive.</summary>
public sealed partial class RelayLink : IAsyncDisposable
{
    private readonly RelayLinkOptions _options;
    private readonly TimeProvider _clock;
    private readonly ILogger _logger;
    private readonly SslStream _stream;
    private readonly FrameOutbox _outbox;
    private readonly Channel<RelayPacket>? _ownInbound;
    private readonly ChannelWriter<RelayPacket> _inbound;
    private readonly CancellationTokenSource _stop = new();
    private readonly TaskCompletionSource<RelayLinkClosure> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly ConcurrentDictionary<string, RelayBinding> _byRemote = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<ushort, string> _byChannel = new();
    private readonly ConcurrentDictionary<string, bool> _present = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<uint, TaskCompletionSource<RelayBinding>> _pendingBinds = new();
    private readonly ConcurrentDictionary<ulong, (TaskCompletionSource<TimeSpan> Done, long Sent)> _pendingPings = new();
    private static readonly ChannelReader<RelayPacket> s_noPackets = CreateCompleted();
    private RelayLinkClosure? _closure;
    private ITimer? _keepalive;
    private Task _run = Task.CompletedTask;
    private long _lastReceived;
    private int _nextRequest;
    private long _nextPing;
    private long _packetsDropped;

    private RelayLink(RelayEndpoint endpoint, string relayIdentity, string localIdentity, SslStream stream, RelayLinkOptions options, ChannelWriter<RelayPacket>? sink, ILogger logger)
    {
        Endpoint = endpoint;
        RelayIdentity = relayIdentity;
        LocalIdentity = localIdentity;
        _stream = stream;
        _options = options;
        _clock = options.TimeProvider;
        _logger = logger;
        _outbox = new FrameOutbox(options.OutboundQueueCapacity);
        if (sink is null)
        {
            _ownInbound = Channel.CreateBounded<RelayPacket>(new BoundedChannelOptions(Math.Max(1, options.InboundQueueCapacity))
            {
                SingleWriter = true,
                FullMode = BoundedChannelFullMode.Wait,
            });
            _inbound = _ownInbound.Writer;
        }
        else
        {
            _inbound = sink;
        }

        _lastReceived = _clock.GetTimestamp();
    }

    /// <summary>The relay this link goes to.</summary>
    public RelayEndpoint Endpoint { get; }

    /// <summary>The relay's identity from its certificate ("relay/…").</summary>
    public string RelayIdentity { get; }

    /// <summary>This peer's identity from its own certificate.</summary>
    public string LocalIdentity { get; }

    /// <summary>Open until the link ends; then Closed or Faulted.</summary>
    public RelayLinkState State => Volatile.Read(ref _closure)?.State ?? RelayLinkState.Open;

    /// <summary>Completes (never faults) when the link ends, saying how and why.</summary>
    public Task<RelayLinkClosure> Completion => _completion.Task;

    /// <summary>Packets from remote peers; completes when the link ends. Empty when the link was opened by a <see cref="RelayPool"/>.</summary>
    public ChannelReader<RelayPacket> Packets => _ownInbound?.Reader ?? s_noPackets;

    /// <summary>Pairs currently bound on this link.</summary>
    public IReadOnlyCollection<RelayBinding> Bindings => [.. _byRemote.Values];

    /// <summary>Received packets dropped because the application was not reading them fast enough.</summary>
    public long PacketsDropped => Interlocked.Read(ref _packetsDropped);

    /// <summary>Dials a relay, authenticates both ends with certificates from the deployment CA, and checks the relay answers.</summary>
    public static Task<RelayLink> ConnectAsync(RelayEndpoint relay, RelayLinkOptions options, ILogger? logger = null, CancellationToken cancellationToken = default) =>
        ConnectAsync(relay, options, sink: null, logger, cancellationToken);

    internal static async Task<RelayLink> ConnectAsync(RelayEndpoint relay, RelayLinkOptions options, ChannelWriter<RelayPacket>? sink, ILogger? logger, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(relay);
        ArgumentNullException.ThrowIfNull(options);
        logger ??= NullLogger.Instance;
        var localIdentity = PeerIdentity.FromCertificate(options.ClientCertificate)
            ?? throw new ArgumentException($"The client certificate CN must be kind/id, not '{options.ClientCertificate.Subject}'.", nameof(options));
        if (options.KeepaliveInterval <= TimeSpan.Zero || options.IdleTimeout <= options.KeepaliveInterval)
        {
            throw new ArgumentOutOfRangeException(nameof(options), "Keepalive interval must be positive and shorter than the idle timeout.");
        }

        using var timeout = new CancellationTokenSource(options.ConnectTimeout, options.TimeProvider);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        SslStream? ssl = null;
        RelayLink? link = null;
        try
        {
            await socket.ConnectAsync(relay.Host, relay.Port, linked.Token).ConfigureAwait(false);
            ssl = new SslStream(new NetworkStream(socket, ownsSocket: true), leaveInnerStreamOpen: false);
            string? relayIdentity = null;
            var refusal = RelayRefusal.None;
            var refusalText = string.Empty;
            var clientOptions = new SslClientAuthenticationOptions
            {
                TargetHost = relay.Host,
                ClientCertificateContext = SslStreamCertificateContext.Create(options.ClientCertificate, additionalCertificates: null, offline: true),
                EnabledSslProtocols = SslProtocols.Tls13,
                CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                ApplicationProtocols = [RelayTls.Alpn],
                RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
                {
                    // Chain errors from the platform are expected (our CA is not in the system store) and re-checked below
                    // against the deployment CA alone; a name mismatch or a missing certificate is final.
                    if ((errors & (SslPolicyErrors.RemoteCertificateNameMismatch | SslPolicyErrors.RemoteCertificateNotAvailable)) != 0)
                    {
                        refusal = RelayRefusal.UntrustedCertificate;
                        refusalText = $"relay certificate does not match '{relay.Host}' ({errors})";
                        return false;
                    }

                    refusal = RelayTls.Validate(certificate, options.CaCertificate, options.TimeProvider.GetUtcNow(), out relayIdentity, out refusalText);
                    if (refusal == RelayRefusal.None && PeerIdentity.KindOf(relayIdentity!) != PeerIdentity.Relay)
                    {
                        refusal = RelayRefusal.BadIdentity;
                        refusalText = $"'{relayIdentity}' is not a relay identity";
                    }
                    else if (refusal == RelayRefusal.None && options.ExpectedRelayIdentity is { } expected && !string.Equals(expected, relayIdentity, StringComparison.Ordinal))
                    {
                        refusal = RelayRefusal.BadIdentity;
                        refusalText = $"relay is '{relayIdentity}', expected '{expected}'";
                    }

                    return refusal == RelayRefusal.None;
                },
            };
            try
            {
                await ssl.AuthenticateAsClientAsync(clientOptions, linked.Token).ConfigureAwait(false);
            }
            catch (AuthenticationException ex) when (refusal != RelayRefusal.None)
            {
                throw new RelayException(refusal, $"relay {relay} refused: {refusalText}", ex);
            }

            link = new RelayLink(relay, relayIdentity!, localIdentity, ssl, options, sink, logger);
            link.Start();

            // In TLS 1.3 the server judges our certificate after our side of the handshake is done, so only a round trip
            // proves the relay accepted us; without it a refused link would look open until the first read failed.
            await link.PingAsync(linked.Token).ConfigureAwait(false);
            LogLinkUp(logger, localIdentity, link.RelayIdentity, relay);
            return link;
        }
        catch (Exception ex) when (ex is not RelayException)
        {
            if (link is not null)
            {
                var closure = link.Completion.IsCompleted ? await link.Completion.ConfigureAwait(false) : null;
                await link.DisposeAsync().ConfigureAwait(false);
                if (closure is not null)
                {
                    // A relay that refuses our certificate just drops the connection after the TLS 1.3 handshake; say so.
                    var hint = closure.Reason == RelayRefusal.None ? " before the first round trip; it most likely refused this peer's certificate (see the relay log)" : string.Empty;
                    throw new RelayException(closure.Reason == RelayRefusal.None ? RelayRefusal.HandshakeFailed : closure.Reason, $"relay {relay} closed the link{hint}: {closure.Message}", ex);
                }
            }
            else if (ssl is not null)
            {
                await ssl.DisposeAsync().ConfigureAwait(false);
            }
            else
            {
                socket.Dispose();
            }

            if (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
            {
                throw new RelayException(RelayRefusal.HandshakeFailed, $"connecting to relay {relay} timed out after {options.ConnectTimeout.TotalSeconds:0.#} s", ex);
            }

            if (ex is OperationCanceledException)
            {
                throw;
            }

            throw new RelayException(RelayRefusal.HandshakeFailed, $"connecting to relay {relay} failed: {ex.Message}", ex);
        }
        catch (RelayException ex)
        {
            if (link is not null)
            {
                await link.DisposeAsync().ConfigureAwait(false);
                if (ex.Reason == RelayRefusal.None)
                {
                    // A relay that refuses our certificate just drops the connection after the TLS 1.3 handshake; say so.
                    throw new RelayException(
                        RelayRefusal.HandshakeFailed,
                        $"relay {relay} closed the link before the first round trip; it most likely refused this peer's certificate (see the relay log): {ex.Message}",
                        ex);
                }
            }
            else if (ssl is not null)
            {
                await ssl.DisposeAsync().ConfigureAwait(false);
            }
            else
            {
                socket.Dispose();
            }

            throw;
        }
    }

    /// <summary>Presents a ticket naming this peer and a remote peer; resolves with the binding or throws <see cref="RelayException"/> with the relay's reason.</summary>
    public async Task<RelayBinding> BindAsync(string ticket, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(ticket);
        if (ticket.Length > RelayTicket.MaxTextLength)
        {
            throw new ArgumentException("The ticket text is too long.", nameof(ticket));
        }

        ThrowIfEnded();
        var requestId = (uint)Interlocked.Increment(ref _nextRequest);
        var done = new TaskCompletionSource<RelayBinding>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pendingBinds[requestId] = done;
        try
        {
            var buffer = OutboundFrame.RentBuffer(RelayFrameCodec.BindLength(ticket));
            var length = RelayFrameCodec.WriteBind(buffer, requestId, ticket);
            if (!_outbox.TryEnqueueControl(OutboundFrame.Of(buffer, length, isData: false)))
            {
                ThrowIfEnded();
                throw new RelayException(RelayRefusal.None, "too many requests waiting for the relay");
            }

            // A link ending while we wait fails the pending request, so this never waits past the link.
            return await done.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _pendingBinds.TryRemove(requestId, out _);
        }
    }

    /// <summary>Releases the binding for <paramref name="remotePeer"/>; false when it was not bound.</summary>
    public bool Unbind(string remotePeer)
    {
        if (!_byRemote.TryRemove(remotePeer, out var binding))
        {
            return false;
        }

        _byChannel.TryRemove(binding.Channel, out _);
        _present.TryRemove(remotePeer, out _);
        var buffer = OutboundFrame.RentBuffer(RelayFrameCodec.UnbindLength);
        var length = RelayFrameCodec.WriteUnbind(buffer, binding.Channel);
        _outbox.TryEnqueueControl(OutboundFrame.Of(buffer, length, isData: false));
        return true;
    }

    /// <summary>True when a ticket for <paramref name="remotePeer"/> is bound on this open link.</summary>
    public bool IsBound(string remotePeer) => State == RelayLinkState.Open && _byRemote.ContainsKey(remotePeer);

    /// <summary>
    /// True when the relay last said <paramref name="remotePeer"/> is connected to it and has bound our pair, so packets
    /// sent here reach it. The relay reports changes as they happen (and corrects itself on the next packet after a race).
    /// </summary>
    public bool IsPeerPresent(string remotePeer) => IsBound(remotePeer) && _present.TryGetValue(remotePeer, out var present) && present;

    /// <summary>
    /// Sends one packet to a bound remote peer, waiting only for room in the link's queue. Returns false, like a UDP send
    /// that goes nowhere, when the pair is not bound or the link has ended.
    /// </summary>
    public ValueTask<bool> SendAsync(string remotePeer, ReadOnlyMemory<byte> packet, CancellationToken cancellationToken = default)
    {
        if (packet.Length is < 1 or > RelayFrameCodec.MaxPacketLength)
        {
            throw new ArgumentOutOfRangeException(nameof(packet), packet.Length, $"A relayed packet is 1..{RelayFrameCodec.MaxPacketLength} bytes.");
        }

        if (State != RelayLinkState.Open || !_byRemote.TryGetValue(remotePeer, out var binding))
        {
            return ValueTask.FromResult(false);
        }

        var buffer = OutboundFrame.RentBuffer(RelayFrameCodec.DataLength(packet.Length));
        var length = RelayFrameCodec.WriteData(buffer, binding.Channel, packet.Span);
        return _outbox.EnqueuePacketAsync(OutboundFrame.Of(buffer, length, isData: true), cancellationToken);
    }

    /// <summary>Measures one round trip to the relay (also usable to compare this relayed path with others).</summary>
    public async Task<TimeSpan> PingAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfEnded();
        var value = (ulong)Interlocked.Increment(ref _nextPing);
        var done = new TaskCompletionSource<TimeSpan>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pendingPings[value] = (done, _clock.GetTimestamp());
        try
        {
            if (!SendPing(value))
            {
                ThrowIfEnded();
                throw new RelayException(RelayRefusal.None, "too many requests waiting for the relay");
            }

            return await done.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _pendingPings.TryRemove(value, out _);
        }
    }

    /// <summary>Closes the link (tells the relay, then drops the connection) and waits for it to end.</summary>
    public async ValueTask DisposeAsync()
    {
        End(new RelayLinkClosure(RelayLinkState.Closed, RelayRefusal.None, "closed by its owner"), notifyRelay: true);
        try
        {
            await _run.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // The run loop ends by itself once the stream is gone; disposal must not hang on a dead peer.
            await _stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    private void Start()
    {
        // The timer exists before the run loop can end, so the loop's cleanup always finds and disposes it.
        _keepalive = _clock.CreateTimer(static state => ((RelayLink)state!).KeepaliveTick(), this, _options.KeepaliveInterval, _options.KeepaliveInterval);
        _run = Task.Run(RunAsync, CancellationToken.None);
    }

    private static ChannelReader<RelayPacket> CreateCompleted()
    {
        var channel = Channel.CreateBounded<RelayPacket>(1);
        channel.Writer.Complete();
        return channel.Reader;
    }

    private async Task RunAsync()
    {
        var output = PipeWriter.Create(_stream, new StreamPipeWriterOptions(minimumBufferSize: 16 * 1024, leaveOpen: true));
        var writer = Task.Run(() => _outbox.RunWriterAsync(output, static _ => { }, CancellationToken.None), CancellationToken.None);
        _ = writer.ContinueWith(
            static (t, state) => ((RelayLink)state!).End(new RelayLinkClosure(RelayLinkState.Faulted, RelayRefusal.None, $"writing to the relay failed: {t.Exception?.GetBaseException().Message}", t.Exception?.GetBaseException()), notifyRelay: false),
            this,
            CancellationToken.None,
            TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);
        try
        {
            var closure = await ReadLoopAsync(_stop.Token).ConfigureAwait(false);
            End(closure, notifyRelay: closure.Reason == RelayRefusal.ProtocolError);
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException or AuthenticationException or SocketException)
        {
            End(new RelayLinkClosure(RelayLinkState.Faulted, RelayRefusal.None, $"link to relay lost: {ex.Message}", ex), notifyRelay: false);
        }
        finally
        {
            if (_keepalive is not null)
            {
                await _keepalive.DisposeAsync().ConfigureAwait(false);
            }

            try
            {
                // Let a closing Error frame out, but never wait long on a relay that stopped reading.
                await writer.WaitAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is TimeoutException or IOException or ObjectDisposedException or OperationCanceledException or AuthenticationException)
            {
                // Disposing the stream below ends the writer.
            }

            await _stream.DisposeAsync().ConfigureAwait(false);
            if (writer.IsCompleted)
            {
                // Only once the writer is done: a PipeWriter must not be completed while a flush is still running.
                try
                {
                    await output.CompleteAsync().ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is IOException or ObjectDisposedException or InvalidOperationException)
                {
                    // Nothing left to deliver to a closed transport.
                }
            }
            var closure = Volatile.Read(ref _closure)!;
            FailPending(closure);
            _ownInbound?.Writer.TryComplete();
            LogLinkDown(_logger, LocalIdentity, RelayIdentity, Endpoint, closure.State, closure.Reason, closure.Message);
            _completion.TrySetResult(closure);
        }
    }

    private async Task<RelayLinkClosure> ReadLoopAsync(CancellationToken cancellationToken)
    {
        var input = PipeReader.Create(_stream, new StreamPipeReaderOptions(bufferSize: 64 * 1024, minimumReadSize: 4096, leaveOpen: true));
        try
        {
            while (true)
            {
                var result = await input.ReadAsync(cancellationToken).ConfigureAwait(false);
                var buffer = result.Buffer;
                Volatile.Write(ref _lastReceived, _clock.GetTimestamp());
                while (true)
                {
                    var status = RelayFrameCodec.TryRead(ref buffer, out var frame, out var error);
                    if (status == RelayFrameStatus.Incomplete)
                    {
                        break;
                    }

                    if (status == RelayFrameStatus.Invalid)
                    {
                        return new RelayLinkClosure(RelayLinkState.Faulted, RelayRefusal.ProtocolError, $"relay sent an invalid frame: {error}");
                    }

                    var closure = HandleFrame(frame);
                    if (closure is not null)
                    {
                        return closure;
                    }
                }

                input.AdvanceTo(buffer.Start, buffer.End);
                if (result.IsCompleted || result.IsCanceled)
                {
                    return new RelayLinkClosure(RelayLinkState.Faulted, RelayRefusal.None, "relay closed the connection");
                }
            }
        }
        finally
        {
            await input.CompleteAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Handles one frame from the relay; a non-null result ends the link.</summary>
    private RelayLinkClosure? HandleFrame(RelayFrame frame)
    {
        switch (frame.Type)
        {
            case RelayFrameType.Data:
                if (!RelayFrameCodec.TryReadData(frame.Payload, out var channel, out var packet))
                {
                    return Protocol("malformed Data frame");
                }

                if (_byChannel.TryGetValue(channel, out var from))
                {
                    // A fresh array per packet: ownership passes to the application, which may keep it as long as it likes.
                    if (!_inbound.TryWrite(new RelayPacket(from, packet.ToArray())))
                    {
                        Interlocked.Increment(ref _packetsDropped);
                    }
                }

                return null;

            case RelayFrameType.BindOk:
                if (!RelayFrameCodec.TryReadBindOk(frame.Payload, out var okId, out var okChannel, out var present, out var notAfter, out var remote))
                {
                    return Protocol("malformed BindOk frame");
                }

                _present[remote] = present;

                var binding = new RelayBinding(remote, okChannel, notAfter);
                if (_byRemote.TryGetValue(remote, out var previous) && previous.Channel != okChannel)
                {
                    _byChannel.TryRemove(previous.Channel, out _);
                }

                _byChannel[okChannel] = remote;
                _byRemote[remote] = binding;
                if (_pendingBinds.TryGetValue(okId, out var bound))
                {
                    bound.TrySetResult(binding);
                }

                return null;

            case RelayFrameType.PeerState:
                if (!RelayFrameCodec.TryReadPeerState(frame.Payload, out var stateChannel, out var statePresent))
                {
                    return Protocol("malformed PeerState frame");
                }

                if (_byChannel.TryGetValue(stateChannel, out var statePeer))
                {
                    _present[statePeer] = statePresent;
                }

                return null;

            case RelayFrameType.BindRefused:
                if (!RelayFrameCodec.TryReadBindRefused(frame.Payload, out var refusedId, out var reason, out var message))
                {
                    return Protocol("malformed BindRefused frame");
                }

                LogBindRefused(_logger, LocalIdentity, RelayIdentity, reason, message);
                if (_pendingBinds.TryGetValue(refusedId, out var refused))
                {
                    refused.TrySetException(new RelayException(reason, $"relay {RelayIdentity} refused the ticket: {reason}: {message}"));
                }

                return null;

            case RelayFrameType.Ping:
                if (!RelayFrameCodec.TryReadPing(frame.Payload, out var ping))
                {
                    return Protocol("malformed Ping frame");
                }

                var buffer = OutboundFrame.RentBuffer(RelayFrameCodec.PingLength);
                var length = RelayFrameCodec.WritePing(buffer, RelayFrameType.Pong, ping);
                _outbox.TryEnqueueControl(OutboundFrame.Of(buffer, length, isData: false));
                return null;

            case RelayFrameType.Pong:
                if (!RelayFrameCodec.TryReadPing(frame.Payload, out var pong))
                {
                    return Protocol("malformed Pong frame");
                }

                if (_pendingPings.TryGetValue(pong, out var waiting))
                {
                    waiting.Done.TrySetResult(_clock.GetElapsedTime(waiting.Sent));
                }

                return null;

            case RelayFrameType.Error:
                RelayFrameCodec.TryReadError(frame.Payload, out var errorReason, out var errorMessage);
                return new RelayLinkClosure(RelayLinkState.Faulted, errorReason, $"relay {RelayIdentity} closed the link: {errorReason}: {errorMessage}");

            default:
                return Protocol($"{frame.Type} frames only travel from peer to relay");
        }

        static RelayLinkClosure Protocol(string message) => new(RelayLinkState.Faulted, RelayRefusal.ProtocolError, message);
    }

    private void KeepaliveTick()
    {
        if (State != RelayLinkState.Open)
        {
            return;
        }

        var silent = _clock.GetElapsedTime(Volatile.Read(ref _lastReceived));
        if (silent > _options.IdleTimeout)
        {
            End(new RelayLinkClosure(RelayLinkState.Faulted, RelayRefusal.IdleTimeout, $"nothing from relay {RelayIdentity} for {silent.TotalSeconds:0.#} s"), notifyRelay: true);
            return;
        }

        // Keepalive pings carry no waiter; their Pong only refreshes the idle clock.
        SendPing((ulong)Interlocked.Increment(ref _nextPing));
    }

    private bool SendPing(ulong value)
    {
        var buffer = OutboundFrame.RentBuffer(RelayFrameCodec.PingLength);
        var length = RelayFrameCodec.WritePing(buffer, RelayFrameType.Ping, value);
        return _outbox.TryEnqueueControl(OutboundFrame.Of(buffer, length, isData: false));
    }

    /// <summary>Records how the link ended (first caller wins), stops the loops and fails waiters.</summary>
    private void End(RelayLinkClosure closure, bool notifyRelay)
    {
        if (Interlocked.CompareExchange(ref _closure, closure, null) is not null)
        {
            return;
        }

        if (notifyRelay)
        {
            var message = closure.Message;
            var buffer = OutboundFrame.RentBuffer(RelayFrameCodec.ErrorLength(message));
            var length = RelayFrameCodec.WriteError(buffer, closure.Reason, message);
            _outbox.TryEnqueueControl(OutboundFrame.Of(buffer, length, isData: false));
        }

        _outbox.Complete();
        FailPending(closure);
        try
        {
            _stop.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // Already torn down.
        }
    }

    private void FailPending(RelayLinkClosure closure)
    {
        var error = new RelayException(closure.Reason, $"link to relay {RelayIdentity} ended: {closure.Message}", closure.Exception);
        foreach (var pending in _pendingBinds.Values)
        {
            pending.TrySetException(error);
        }

        foreach (var pending in _pendingPings.Values)
        {
            pending.Done.TrySetException(error);
        }
    }

    private void ThrowIfEnded()
    {
        if (Volatile.Read(ref _closure) is { } closure)
        {
            throw new RelayException(closure.Reason, $"link to relay {RelayIdentity} ended: {closure.Message}", closure.Exception);
        }
    }
}

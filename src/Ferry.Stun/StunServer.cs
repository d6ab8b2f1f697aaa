using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Ferry.Stun;

/// <summary>A UDP STUN server that answers Binding requests with the requester's reflexive address.</summary>
/// <remarks>
/// <para>
/// Requests without the magic cookie (RFC 3489) are dropped rather than answered with
/// MAPPED-ADDRESS: every Ferry peer speaks RFC 8489, a cookie-less response could not be told
/// apart from QUIC on a shared socket by the RFC 7983 check anyway, and answering such requests
/// would only widen what the server reflects for scanners and spoofers.
/// </para>
/// <para>
/// Amplification bound: a response is never more than <see cref="MaxAmplificationFactor"/> times the
/// size of the request that caused it. By construction the largest response (an IPv6
/// XOR-MAPPED-ADDRESS answer, 52 bytes) fits three times the smallest request (20 bytes); a 420
/// lists each unknown attribute in 2 bytes while the request spent at least 4 on it, and no
/// SOFTWARE is sent. Anything that would break the bound is dropped and counted, not sent.
/// </para>
/// </remarks>
public sealed partial class StunServer : IAsyncDisposable
{
    /// <summary>A response is at most this many times as long as its request.</summary>
    public const int MaxAmplificationFactor = 3;

    // A 420 lists at most this many attribute types; more would add nothing a client can act on.
    private const int MaxUnknownListed = 16;

    // Big enough for any UDP datagram, so nothing arrives truncated and misparsed.
    private const int ReceiveBufferLength = 65536;
    private const int ResponseBufferLength = 256;

    private readonly StunServerOptions _options;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly StunRateLimiter _rateLimiter;
    private readonly List<Socket> _sockets = [];
    private readonly List<Task> _loops = [];
    private readonly long[] _dropped = new long[Enum.GetValues<StunDropReason>().Length];
    private readonly CancellationTokenSource _stopping = new();
    private IPEndPoint[] _localEndPoints = [];
    private long _datagrams;
    private long _requests;
    private long _successes;
    private long _errors;
    private int _state; // 0 new, 1 started, 2 stopped

    /// <summary>Creates a server; nothing is bound until <see cref="Start"/>.</summary>
    public StunServer(StunServerOptions? options = null, ILogger? logger = null, TimeProvider? timeProvider = null)
    {
        _options = options ?? new StunServerOptions();
        _logger = logger ?? NullLogger.Instance;
        _time = timeProvider ?? TimeProvider.System;
        _rateLimiter = new StunRateLimiter(_options.RequestsPerSecondPerSource, _options.BurstPerSource, _options.MaxTrackedSources, _time);
    }

    /// <summary>The endpoints actually bound (with real ports when 0 was asked for); empty before <see cref="Start"/>.</summary>
    public IReadOnlyList<IPEndPoint> LocalEndPoints => _localEndPoints;

    /// <summary>Binds every configured endpoint and starts one receive loop per socket.</summary>
    /// <exception cref="SocketException">An endpoint could not be bound; nothing stays bound.</exception>
    public void Start()
    {
        if (Interlocked.CompareExchange(ref _state, 1, 0) != 0)
        {
            throw new InvalidOperationException("The STUN server was already started.");
        }

        if (_options.EndPoints.Count == 0)
        {
            throw new InvalidOperationException("The STUN server has no endpoints to bind.");
        }

        var bound = new List<IPEndPoint>();
        try
        {
            foreach (var endPoint in _options.EndPoints)
            {
                var socket = new Socket(endPoint.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
                _sockets.Add(socket);
                if (endPoint.AddressFamily == AddressFamily.InterNetworkV6)
                {
                    // Each family gets its own socket so the IPv4 one can be configured separately.
                    socket.DualMode = false;
                }

                socket.Bind(endPoint);
                TryEnlargeReceiveBuffer(socket);
                bound.Add((IPEndPoint)socket.LocalEndPoint!);
            }
        }
        catch
        {
            foreach (var socket in _sockets)
            {
                socket.Dispose();
            }

            _sockets.Clear();
            throw;
        }

        _localEndPoints = [.. bound];
        for (int i = 0; i < _sockets.Count; i++)
        {
            Log.Listening(_logger, bound[i]);
            var socket = _sockets[i];
            _loops.Add(Task.Run(() => ReceiveLoopAsync(socket, _stopping.Token)));
        }
    }

    /// <summary>Starts, runs until <paramref name="cancellationToken"/> fires, then stops.</summary>
    public async Task RunAsync(CancellationToken cancellationToken)
    {
        Start();
        try
        {
            await Task.Delay(Timeout.Infinite, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
        finally
        {
            await StopAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Closes the sockets and waits for the receive loops to finish.</summary>
    public async Task StopAsync()
    {
        if (Interlocked.Exchange(ref _state, 2) == 2)
        {
            return;
        }

        await _stopping.CancelAsync().ConfigureAwait(false);
        foreach (var socket in _sockets)
        {
            socket.Dispose();
        }

        await Task.WhenAll(_loops).ConfigureAwait(false);
        Log.Stopped(_logger);
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        await StopAsync().ConfigureAwait(false);
        _stopping.Dispose();
    }

    /// <summary>Copies the counters.</summary>
    public StunServerStatistics GetStatistics()
    {
        var dropped = new Dictionary<StunDropReason, long>();
        foreach (var reason in Enum.GetValues<StunDropReason>())
        {
            dropped[reason] = Interlocked.Read(ref _dropped[(int)reason]);
        }

        return new StunServerStatistics
        {
            DatagramsReceived = Interlocked.Read(ref _datagrams),
            RequestsReceived = Interlocked.Read(ref _requests),
            SuccessResponses = Interlocked.Read(ref _successes),
            ErrorResponses = Interlocked.Read(ref _errors),
            Dropped = dropped,
        };
    }

    /// <summary>
    /// Decides the answer to one datagram: writes a response and returns its length, or returns 0
    /// and the reason for silence. Pure apart from counters and the rate limiter, so tests and
    /// fuzzers drive it without sockets.
    /// </summary>
    internal int Process(ReadOnlySpan<byte> request, PeerAddress peer, Span<byte> response, out StunDropReason dropReason)
    {
        Interlocked.Increment(ref _datagrams);
        int length = Decide(request, peer, response, out dropReason, out bool isError);
        if (length == 0)
        {
            Interlocked.Increment(ref _dropped[(int)dropReason]);
            return 0;
        }

        if (length > MaxAmplificationFactor * request.Length)
        {
            dropReason = StunDropReason.AmplificationBound;
            Interlocked.Increment(ref _dropped[(int)dropReason]);
            return 0;
        }

        Interlocked.Increment(ref isError ? ref _errors : ref _successes);
        return length;
    }

    private int Decide(ReadOnlySpan<byte> request, PeerAddress peer, Span<byte> response, out StunDropReason dropReason, out bool isError)
    {
        isError = false;
        dropReason = StunDropReason.NotStun;
        if (request.Length < StunConstants.HeaderLength || request[0] > 3)
        {
            return 0;
        }

        if (BinaryPrimitives.ReadUInt32BigEndian(request[4..]) != StunConstants.MagicCookie)
        {
            dropReason = StunDropReason.NoMagicCookie;
            return 0;
        }

        var type = StunMessageType.FromWire(BinaryPrimitives.ReadUInt16BigEndian(request));
        if (type.Class != StunMessageClass.Request)
        {
            dropReason = StunDropReason.NotRequest;
            return 0;
        }

        if (type.Method != StunMethod.Binding)
        {
            dropReason = StunDropReason.UnsupportedMethod;
            return 0;
        }

        Interlocked.Increment(ref _requests);

        // Before the CRC and attribute walk, so a flood costs as little as possible.
        if (!_rateLimiter.TryAcquire(peer.RateKey))
        {
            dropReason = StunDropReason.RateLimited;
            return 0;
        }

        var transactionId = StunTransactionId.Read(request[8..]);
        if (!StunMessage.TryParse(request, out var message, out var error))
        {
            switch (error)
            {
                case StunParseError.BadFingerprint:
                    // A wrong CRC may mean this is not STUN at all; RFC 8489 says discard silently.
                    dropReason = StunDropReason.BadFingerprint;
                    return 0;
                case StunParseError.AttributeOverrun or StunParseError.InvalidAttribute or StunParseError.AttributeAfterFingerprint:
                    // The header is sound, so the client is STUN and learns from a 400 not to retry.
                    isError = true;
                    return WriteError(response, transactionId, 400, "Bad Request", []);
                default:
                    // Length disagreements: RFC 8489 section 6.3 says discard silently.
                    dropReason = StunDropReason.MalformedHeader;
                    return 0;
            }
        }

        Span<ushort> unknown = stackalloc ushort[MaxUnknownListed];
        int unknownCount = message.GetUnknownComprehensionRequired(unknown);
        if (unknownCount > 0)
        {
            isError = true;
            return WriteError(response, transactionId, 420, "Unknown Attribute", unknown[..unknownCount]);
        }

        Span<byte> address = stackalloc byte[16];
        int addressLength = peer.WriteAddress(address);
        var writer = new StunMessageWriter(response, StunMessageType.BindingSuccess, transactionId);
        writer.AddXorMappedAddress(address[..addressLength], peer.Port);
        writer.AddFingerprint();
        return writer.Length;
    }

    private static int WriteError(Span<byte> response, StunTransactionId transactionId, int code, string reason, ReadOnlySpan<ushort> unknown)
    {
        var writer = new StunMessageWriter(response, StunMessageType.BindingError, transactionId);
        writer.AddErrorCode(code, reason);
        if (!unknown.IsEmpty)
        {
            writer.AddUnknownAttributes(unknown);
        }

        writer.AddFingerprint();
        return writer.Length;
    }

    private async Task ReceiveLoopAsync(Socket socket, CancellationToken cancellationToken)
    {
        byte[] receiveBuffer = ArrayPool<byte>.Shared.Rent(ReceiveBufferLength);
        byte[] responseBuffer = ArrayPool<byte>.Shared.Rent(ResponseBufferLength);
        var remote = new SocketAddress(socket.AddressFamily);
        int consecutiveErrors = 0;
        try
        {
            while (!cancellationToken.IsCancellationRequested)
            {
                int received;
                try
                {
                    received = await socket.ReceiveFromAsync(receiveBuffer, SocketFlags.None, remote, cancellationToken).ConfigureAwait(false);
                    consecutiveErrors = 0;
                }
                catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
                {
                    break;
                }
                catch (ObjectDisposedException)
                {
                    break;
                }
                catch (SocketException) when (cancellationToken.IsCancellationRequested)
                {
                    break;
                }
                catch (SocketException ex)
                {
                    // ICMP errors (ConnectionReset on Windows) and the like belong to one peer, not the socket.
                    Log.ReceiveFailed(_logger, ex.SocketErrorCode, ex);
                    if (++consecutiveErrors >= 100)
                    {
                        // A socket stuck in error must not spin a core.
                        await Task.Delay(TimeSpan.FromMilliseconds(100), _time, cancellationToken).ConfigureAwait(false);
                    }

                    continue;
                }

                int responseLength = Handle(receiveBuffer.AsSpan(0, received), remote, responseBuffer);
                if (responseLength == 0)
                {
                    continue;
                }

                try
                {
                    // UDP sends complete at once or fail; no peer can hold this loop up.
                    await socket.SendToAsync(responseBuffer.AsMemory(0, responseLength), SocketFlags.None, remote, cancellationToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
                {
                    break;
                }
                catch (ObjectDisposedException)
                {
                    break;
                }
                catch (SocketException ex)
                {
                    Interlocked.Increment(ref _dropped[(int)StunDropReason.SendFailed]);
                    Log.SendFailed(_logger, ex.SocketErrorCode);
                }
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(receiveBuffer);
            ArrayPool<byte>.Shared.Return(responseBuffer);
        }
    }

    // Bursts of requests (many peers refreshing at once) otherwise overflow the default buffer;
    // the kernel caps the size at its own limit, and a refusal is no reason not to serve.
    private static void TryEnlargeReceiveBuffer(Socket socket)
    {
        try
        {
            socket.ReceiveBufferSize = Math.Max(socket.ReceiveBufferSize, 1 << 20);
        }
        catch (SocketException)
        {
        }
    }

    private int Handle(ReadOnlySpan<byte> datagram, SocketAddress remote, Span<byte> response)
    {
        try
        {
            if (!PeerAddress.TryRead(remote, out var peer))
            {
                Interlocked.Increment(ref _dropped[(int)StunDropReason.NotStun]);
                return 0;
            }

            int length = Process(datagram, peer, response, out var reason);
            if (_logger.IsEnabled(LogLevel.Debug))
            {
                if (length > 0)
                {
                    Log.Answered(_logger, peer.ToEndPoint(), length);
                }
                else
                {
                    Log.Dropped(_logger, peer.ToEndPoint(), reason);
                }
            }

            return length;
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            // Whatever one datagram triggers, the loop serves the next.
            Interlocked.Increment(ref _dropped[(int)StunDropReason.InternalError]);
            Log.HandlingFailed(_logger, ex);
            return 0;
        }
    }
}

using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;

namespace Ferry.Stun;

/// <summary>
/// Sends Binding requests and matches responses by transaction id, on a UDP socket someone else
/// owns: the owner sends through a <see cref="StunSendAsync"/> and hands incoming STUN to
/// <see cref="TryHandleIncoming"/>, so the same socket can carry QUIC.
/// </summary>
public sealed class StunClient : IDisposable
{
    private readonly StunSendAsync _send;
    private readonly StunClientOptions _options;
    private readonly TimeProvider _time;
    private readonly ConcurrentDictionary<StunTransactionId, Transaction> _pending = new();
    private volatile bool _disposed;

    /// <summary>Creates a client that sends through <paramref name="send"/>.</summary>
    public StunClient(StunSendAsync send, StunClientOptions? options = null, TimeProvider? timeProvider = null)
    {
        ArgumentNullException.ThrowIfNull(send);
        _send = send;
        _options = options ?? new StunClientOptions();
        _options.Validate();
        _time = timeProvider ?? TimeProvider.System;
    }

    /// <summary>Transactions still waiting for an answer.</summary>
    public int PendingCount => _pending.Count;

    /// <summary>Asks one server for this socket's reflexive address, retransmitting per RFC 8489.</summary>
    /// <exception cref="OperationCanceledException">The token fired.</exception>
    /// <exception cref="ObjectDisposedException">The client was disposed meanwhile.</exception>
    public async Task<StunBindingResult> QueryAsync(IPEndPoint server, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(server);
        ObjectDisposedException.ThrowIf(_disposed, this);
        server = Normalize(server);

        var transaction = new Transaction(server);
        StunTransactionId id;
        do
        {
            id = StunTransactionId.NewRandom();
        }
        while (!_pending.TryAdd(id, transaction));

        if (_disposed)
        {
            // Dispose ran between the check above and the registration, and so missed this one.
            transaction.Completion.TrySetException(new ObjectDisposedException(nameof(StunClient)));
        }

        byte[] request = BuildRequest(id);
        try
        {
            TimeSpan rto = _options.InitialRto;
            long lastSend = 0;
            for (int sent = 1; sent <= _options.MaxTransmissions; sent++)
            {
                lastSend = _time.GetTimestamp();
                try
                {
                    await _send(request, server, cancellationToken).ConfigureAwait(false);
                }
                catch (SocketException ex)
                {
                    return new StunBindingResult
                    {
                        Status = StunBindingStatus.SendFailed,
                        Server = server,
                        Transmissions = sent,
                        SocketError = ex.SocketErrorCode,
                        ErrorReason = ex.Message,
                    };
                }

                TimeSpan wait = sent == _options.MaxTransmissions ? _options.InitialRto * _options.FinalWaitMultiplier : rto;
                try
                {
                    var reply = await transaction.Completion.Task.WaitAsync(wait, _time, cancellationToken).ConfigureAwait(false);
                    return reply.ToResult(server, sent, _time.GetElapsedTime(lastSend, reply.ReceivedAt));
                }
                catch (TimeoutException)
                {
                    rto *= 2;
                }
            }

            return new StunBindingResult
            {
                Status = StunBindingStatus.Timeout,
                Server = server,
                Transmissions = _options.MaxTransmissions,
                ErrorReason = "no response",
            };
        }
        finally
        {
            _pending.TryRemove(id, out _);
        }
    }

    /// <summary>Asks every server at once (say, every relay's STUN server); results come in the order given.</summary>
    public async Task<IReadOnlyList<StunBindingResult>> QueryAllAsync(IEnumerable<IPEndPoint> servers, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(servers);
        var queries = servers.Select(server => QueryAsync(server, cancellationToken)).ToArray();
        return await Task.WhenAll(queries).ConfigureAwait(false);
    }

    /// <summary>
    /// Offers a datagram that arrived on the shared socket. Returns true when it was a response to
    /// one of this client's transactions (consumed, even if malformed); false leaves it to the caller
    /// (QUIC, or STUN requests for the ICE agent).
    /// </summary>
    public bool TryHandleIncoming(ReadOnlySpan<byte> packet, IPEndPoint from)
    {
        ArgumentNullException.ThrowIfNull(from);
        if (!StunPacket.IsStun(packet))
        {
            return false;
        }

        var type = StunMessageType.FromWire(BinaryPrimitives.ReadUInt16BigEndian(packet));
        if (type.Class is not (StunMessageClass.SuccessResponse or StunMessageClass.ErrorResponse) || type.Method != StunMethod.Binding)
        {
            return false;
        }

        var id = StunTransactionId.Read(packet[8..]);
        if (!_pending.TryGetValue(id, out var transaction) || !transaction.Server.Equals(Normalize(from)))
        {
            // A response from elsewhere with a guessed id must not complete the transaction.
            return false;
        }

        long receivedAt = _time.GetTimestamp();
        if (!StunMessage.TryParse(packet, out var message, out _))
        {
            // Damaged or forged: keep waiting for the real answer or a retransmission's answer.
            return true;
        }

        Span<ushort> unknown = stackalloc ushort[1];
        Reply reply;
        if (message.GetUnknownComprehensionRequired(unknown) > 0)
        {
            reply = new Reply(StunBindingStatus.InvalidResponse, null, 0, $"unknown comprehension-required attribute 0x{unknown[0]:x4}", receivedAt);
        }
        else if (type.Class == StunMessageClass.SuccessResponse)
        {
            reply = message.TryGetXorMappedAddress(out var mapped) || message.TryGetMappedAddress(out mapped)
                ? new Reply(StunBindingStatus.Success, mapped, 0, null, receivedAt)
                : new Reply(StunBindingStatus.InvalidResponse, null, 0, "success response without a mapped address", receivedAt);
        }
        else
        {
            reply = message.TryGetErrorCode(out int code, out string? reason)
                ? new Reply(StunBindingStatus.ErrorResponse, null, code, reason, receivedAt)
                : new Reply(StunBindingStatus.InvalidResponse, null, 0, "error response without ERROR-CODE", receivedAt);
        }

        transaction.Completion.TrySetResult(reply);
        return true;
    }

    /// <summary>Fails every pending transaction with <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose()
    {
        _disposed = true;
        foreach (var (_, transaction) in _pending)
        {
            transaction.Completion.TrySetException(new ObjectDisposedException(nameof(StunClient)));
        }
    }

    private byte[] BuildRequest(StunTransactionId id)
    {
        Span<byte> buffer = stackalloc byte[StunConstants.HeaderLength + 4 + StunConstants.MaxSoftwareBytes + 4 + 8];
        var writer = new StunMessageWriter(buffer, StunMessageType.BindingRequest, id);
        if (_options.Software is { } software)
        {
            writer.AddSoftware(software);
        }

        writer.AddFingerprint();
        return writer.Written.ToArray();
    }

    // Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d; compare and report them as IPv4.
    private static IPEndPoint Normalize(IPEndPoint endPoint) =>
        endPoint.Address.IsIPv4MappedToIPv6 ? new IPEndPoint(endPoint.Address.MapToIPv4(), endPoint.Port) : endPoint;

    private sealed class Transaction(IPEndPoint server)
    {
        public IPEndPoint Server { get; } = server;

        public TaskCompletionSource<Reply> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private sealed record Reply(StunBindingStatus Status, IPEndPoint? Mapped, int Code, string? Reason, long ReceivedAt)
    {
        public StunBindingResult ToResult(IPEndPoint server, int transmissions, TimeSpan rtt) => new()
        {
            Status = Status,
            Server = server,
            MappedAddress = Mapped,
            RoundTripTime = rtt,
            Transmissions = transmissions,
            ErrorCode = Code,
            ErrorReason = Reason,
        };
    }
}

using System.Buffers;
using System.Threading.Channels;

namespace Ferry.Core.Flows;

/// <summary>
/// One end of a UDP flow after its header and reply (see <see cref="UdpFlowFraming"/>): payloads leave as datagrams through the
/// connection's <see cref="UdpDatagramMux"/>, or as stream records when too large; both kinds arrive in one queue. Owns the stream.
/// </summary>
public sealed class UdpFlowChannel : IUdpFlow
{
    /// <summary>Payloads waiting to be received; the oldest are dropped beyond this, as a socket's receive buffer would.</summary>
    public const int ReceiveQueueLength = 512;

    private static readonly TimeSpan CloseWriteTimeout = TimeSpan.FromSeconds(2);

    private readonly UdpDatagramMux _mux;
    private readonly Stream _stream;
    private readonly Func<Stream, ValueTask> _completeWrites;
    private readonly Channel<Inbound> _inbound;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly TaskCompletionSource<UdpFlowEnd> _ended = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _stop = new();
    private Task _reader = Task.CompletedTask;
    private long _lastActivity = Environment.TickCount64;
    private long _packetsSent;
    private long _bytesSent;
    private long _packetsReceived;
    private long _bytesReceived;
    private long _sentOnStream;
    private long _receivedOnStream;
    private long _dropped;
    private bool _writesCompleted;
    private int _started;
    private int _disposed;

    internal UdpFlowChannel(UdpDatagramMux mux, long streamId, Stream stream, Func<Stream, ValueTask> completeWrites)
    {
        _mux = mux;
        StreamId = streamId;
        QuarterStreamId = UdpFlowFraming.QuarterStreamId(streamId);
        _stream = stream;
        _completeWrites = completeWrites;
        _inbound = Channel.CreateBounded<Inbound>(
            new BoundedChannelOptions(ReceiveQueueLength) { FullMode = BoundedChannelFullMode.DropOldest, SingleReader = false, SingleWriter = false },
            dropped =>
            {
                dropped.Return();
                Interlocked.Increment(ref _dropped);
            });
    }

    /// <summary>The QUIC stream id of the flow's stream.</summary>
    public long StreamId { get; }

    /// <summary>The id its datagrams carry.</summary>
    public long QuarterStreamId { get; }

    public Task<UdpFlowEnd> Ended => _ended.Task;

    public UdpFlowCounters Counters => new(
        Interlocked.Read(ref _packetsSent), Interlocked.Read(ref _bytesSent), Interlocked.Read(ref _packetsReceived), Interlocked.Read(ref _bytesReceived),
        Interlocked.Read(ref _sentOnStream), Interlocked.Read(ref _receivedOnStream), Interlocked.Read(ref _dropped));

    public TimeSpan Idle => TimeSpan.FromMilliseconds(Math.Max(0, Environment.TickCount64 - Interlocked.Read(ref _lastActivity)));

    /// <summary>Starts reading the stream's records; called once the header and reply have gone by, so the next bytes are records.</summary>
    internal void Start()
    {
        if (Interlocked.Exchange(ref _started, 1) == 0)
        {
            _reader = Task.Run(ReadStreamAsync, CancellationToken.None);
        }
    }

    /// <summary>Queues a datagram's payload (the mux hands over the array it received; nothing is copied until ReceiveAsync).</summary>
    internal void Deliver(byte[] datagram, int offset)
    {
        Touch();
        if (!_inbound.Writer.TryWrite(new Inbound(datagram, offset, datagram.Length - offset, Pooled: false)))
        {
            Interlocked.Increment(ref _dropped);
        }
    }

    public async ValueTask<bool> SendAsync(ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        if (payload.Length > UdpFlowFraming.MaxPayloadLength)
        {
            throw new ArgumentException($"a UDP payload of {payload.Length} bytes is too long: a flow carries at most {UdpFlowFraming.MaxPayloadLength} bytes per packet", nameof(payload));
        }
        if (_ended.Task.IsCompleted)
        {
            return false;
        }
        Touch();
        var length = UdpFlowFraming.DatagramLength(QuarterStreamId, payload.Length);
        if (length <= _mux.MaxDatagramPayloadSize)
        {
            var buffer = ArrayPool<byte>.Shared.Rent(length);
            try
            {
                UdpFlowFraming.EncodeDatagram(buffer, QuarterStreamId, payload.Span);
                if (_mux.TrySend(buffer.AsSpan(0, length)))
                {
                    Count(ref _packetsSent, ref _bytesSent, payload.Length);
                    return true;
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
            // The path shrank or the connection refused the datagram: the stream still carries it, so nothing vanishes for size.
        }
        await _writeLock.WaitAsync(cancellationToken);
        try
        {
            if (_writesCompleted)
            {
                return false;
            }
            await UdpFlowFraming.WriteRecordAsync(_stream, payload, cancellationToken);
            Count(ref _packetsSent, ref _bytesSent, payload.Length);
            Interlocked.Increment(ref _sentOnStream);
            return true;
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
        {
            End(new UdpFlowEnd(ByPeer: false, FlowStatus.Unreachable, $"the flow's stream failed: {e.Message}"));
            return false;
        }
        finally
        {
            _writeLock.Release();
        }
    }

    public async ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        if (buffer.Length < UdpFlowFraming.MaxPayloadLength)
        {
            throw new ArgumentException($"the receive buffer must hold {UdpFlowFraming.MaxPayloadLength} bytes, the longest payload; it has {buffer.Length}", nameof(buffer));
        }
        while (await _inbound.Reader.WaitToReadAsync(cancellationToken))
        {
            if (_inbound.Reader.TryRead(out var item))
            {
                item.Buffer.AsSpan(item.Offset, item.Length).CopyTo(buffer.Span);
                item.Return();
                Count(ref _packetsReceived, ref _bytesReceived, item.Length);
                return item.Length;
            }
        }
        return -1;
    }

    /// <summary>Completes when no payload has gone either way for <paramref name="idle"/>.</summary>
    public async Task WaitForIdleAsync(TimeSpan idle, CancellationToken cancellationToken)
    {
        while (true)
        {
            var remaining = idle - Idle;
            if (remaining <= TimeSpan.Zero)
            {
                return;
            }
            await Task.Delay(remaining + TimeSpan.FromMilliseconds(1), cancellationToken);
        }
    }

    /// <summary>
    /// Ends the flow from this side: a non-Ok <paramref name="reason"/> is sent to the peer in a close record first, then this side's
    /// writes end. Best effort: a peer that is gone just does not hear it.
    /// </summary>
    public async ValueTask CloseAsync(FlowReply reason, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(reason);
        End(new UdpFlowEnd(ByPeer: false, reason.Status, reason.Message));
        using var bound = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        bound.CancelAfter(CloseWriteTimeout);
        try
        {
            await _writeLock.WaitAsync(bound.Token);
        }
        catch (OperationCanceledException)
        {
            return;
        }
        try
        {
            if (_writesCompleted)
            {
                return;
            }
            _writesCompleted = true;
            if (!reason.IsOk)
            {
                await UdpFlowFraming.WriteCloseAsync(_stream, reason, bound.Token);
            }
            await _completeWrites(_stream);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException or OperationCanceledException)
        {
            // The peer or its stream is gone; nobody is left to tell.
        }
        finally
        {
            _writeLock.Release();
        }
    }

    /// <summary>Closes (plainly, if nothing closed it yet), stops reading, leaves the mux and disposes the stream.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        await CloseAsync(new FlowReply(FlowStatus.Ok, "closed"), CancellationToken.None);
        await _stop.CancelAsync();
        await _reader.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        _mux.Unregister(this);
        await _stream.DisposeAsync();
        _inbound.Writer.TryComplete();
        while (_inbound.Reader.TryRead(out var item))
        {
            item.Return();
        }
        _stop.Dispose();
    }

    /// <summary>Ends the flow with the first reason given; later ones are ignored. Queued payloads can still be received.</summary>
    internal void End(UdpFlowEnd end)
    {
        if (_ended.TrySetResult(end))
        {
            _inbound.Writer.TryComplete();
        }
    }

    private async Task ReadStreamAsync()
    {
        var buffer = ArrayPool<byte>.Shared.Rent(UdpFlowFraming.MaxPayloadLength);
        try
        {
            while (true)
            {
                var record = await UdpFlowFraming.ReadRecordAsync(_stream, buffer, _stop.Token);
                switch (record.Kind)
                {
                    case UdpStreamRecordKind.End:
                        End(new UdpFlowEnd(ByPeer: true, FlowStatus.Ok, "the peer closed the flow"));
                        return;
                    case UdpStreamRecordKind.Close:
                        End(new UdpFlowEnd(ByPeer: true, record.Reason!.Status, record.Reason.Message));
                        return;
                    default:
                        Touch();
                        Interlocked.Increment(ref _receivedOnStream);
                        var copy = ArrayPool<byte>.Shared.Rent(Math.Max(1, record.Length));
                        buffer.AsSpan(0, record.Length).CopyTo(copy);
                        if (!_inbound.Writer.TryWrite(new Inbound(copy, 0, record.Length, Pooled: true)))
                        {
                            ArrayPool<byte>.Shared.Return(copy);
                            Interlocked.Increment(ref _dropped);
                        }
                        break;
                }
            }
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested)
        {
            End(new UdpFlowEnd(ByPeer: false, FlowStatus.Ok, "closed"));
        }
        catch (FlowProtocolException e)
        {
            End(new UdpFlowEnd(ByPeer: true, FlowStatus.ProtocolError, e.Message));
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
        {
            End(new UdpFlowEnd(ByPeer: true, FlowStatus.Unreachable, $"the flow's stream failed: {e.Message}"));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private void Touch() => Interlocked.Exchange(ref _lastActivity, Environment.TickCount64);

    private static void Count(ref long packets, ref long bytes, int length)
    {
        Interlocked.Increment(ref packets);
        Interlocked.Add(ref bytes, length);
    }

    /// <summary>A queued payload: a received datagram (the array QUIC handed over) or a pooled copy of a stream record.</summary>
    private readonly record struct Inbound(byte[] Buffer, int Offset, int Length, bool Pooled)
    {
        public void Return()
        {
            if (Pooled)
            {
                ArrayPool<byte>.Shared.Return(Buffer);
            }
        }
    }
}

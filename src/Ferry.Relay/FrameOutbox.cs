using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Threading.Channels;

namespace Ferry.Relay;

/// <summary>One encoded frame in a pooled buffer, owned by whoever holds it until written or dropped.</summary>
internal readonly struct OutboundFrame
{
    private OutboundFrame(byte[] buffer, int length, bool isData)
    {
        Buffer = buffer;
        Length = length;
        IsData = isData;
    }

    public byte[]? Buffer { get; }

    public int Length { get; }

    public bool IsData { get; }

    public static byte[] RentBuffer(int length) => ArrayPool<byte>.Shared.Rent(length);

    public static OutboundFrame Of(byte[] buffer, int length, bool isData) => new(buffer, length, isData);

    public void Return()
    {
        if (Buffer is not null)
        {
            ArrayPool<byte>.Shared.Return(Buffer);
        }
    }
}

/// <summary>The outbound side of one link: a bounded packet queue, a small control queue, and the single writer that drains both.</summary>
internal sealed class FrameOutbox
{
    // Control frames (BindOk, Pong, Error) answer the peer's own requests; a peer that floods requests without reading
    // replies overflows this and is cut off, instead of growing memory without bound.
    private const int MaxControlFrames = 256;

    // Flush at least this often while draining a long queue so TLS records go out steadily instead of in one burst.
    private const int FlushThreshold = 64 * 1024;

    private readonly Channel<OutboundFrame> _queue;
    private readonly ConcurrentQueue<OutboundFrame> _control = new();
    private readonly int _capacity;
    private int _controlCount;
    private volatile bool _congested;
    private volatile bool _completed;

    public FrameOutbox(int capacity)
    {
        _capacity = Math.Max(2, capacity);
        _queue = Channel.CreateBounded<OutboundFrame>(new BoundedChannelOptions(_capacity)
        {
            SingleReader = true,
            SingleWriter = false,
            FullMode = BoundedChannelFullMode.Wait,
        });
    }

    public bool IsCompleted => _completed;

    /// <summary>
    /// Relay side: queue a packet, waiting at most <paramref name="wait"/> for room, else drop it and return false.
    /// </summary>
    /// <remarks>
    /// The caller is another peer's read loop. Waiting without limit for a slow receiver would stall that loop and with it
    /// every other pair the sender talks to, which is exactly the head-of-line blocking a relay must not add (and two peers
    /// flooding each other would block both read loops on each other's full queues for good). The packets are
    /// QUIC, which treats loss as congestion and recovers exactly as on a UDP path, so dropping is the right back-pressure.
    /// After one timed-out wait the queue is marked congested and later packets drop at once (no wait) until it drains to
    /// half, so a persistently slow receiver costs its senders at most one short wait per congestion episode.
    /// </remarks>
    public async ValueTask<bool> TryEnqueuePacketAsync(OutboundFrame frame, TimeSpan wait, CancellationToken cancellationToken)
    {
        if (_queue.Writer.TryWrite(frame))
        {
            if (_congested && _queue.Reader.Count <= _capacity / 2)
            {
                _congested = false;
            }

            return true;
        }

        if (_congested || wait <= TimeSpan.Zero || _completed)
        {
            frame.Return();
            return false;
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(wait);
        try
        {
            await _queue.Writer.WriteAsync(frame, timeout.Token).ConfigureAwait(false);
            return true;
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            _congested = true;
            frame.Return();
            return false;
        }
        catch (ChannelClosedException)
        {
            frame.Return();
            return false;
        }
        catch (OperationCanceledException)
        {
            frame.Return();
            throw;
        }
    }

    /// <summary>Peer side: queue a packet, waiting for room (the caller is the local application, so back-pressure is right).</summary>
    public async ValueTask<bool> EnqueuePacketAsync(OutboundFrame frame, CancellationToken cancellationToken)
    {
        try
        {
            await _queue.Writer.WriteAsync(frame, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (ChannelClosedException)
        {
            frame.Return();
            return false;
        }
        catch (OperationCanceledException)
        {
            frame.Return();
            throw;
        }
    }

    /// <summary>Queues a control frame ahead of packets; false when the link is closing or the peer is not draining its replies.</summary>
    public bool TryEnqueueControl(OutboundFrame frame)
    {
        if (_completed || Interlocked.Increment(ref _controlCount) > MaxControlFrames)
        {
            if (!_completed)
            {
                Interlocked.Decrement(ref _controlCount);
            }

            frame.Return();
            return false;
        }

        _control.Enqueue(frame);

        // A bufferless entry wakes the writer. If the packet queue is full the writer is busy anyway and sees the control
        // queue before its next packet.
        _queue.Writer.TryWrite(default);
        return true;
    }

    /// <summary>No more frames; the writer drains what is queued and ends.</summary>
    public void Complete()
    {
        _completed = true;
        _queue.Writer.TryComplete();
    }

    /// <summary>The single writer: drains control frames first, then packets, flushing when the queues run dry.</summary>
    public async Task RunWriterAsync(PipeWriter output, Action<OutboundFrame> written, CancellationToken cancellationToken)
    {
        var reader = _queue.Reader;
        try
        {
            while (await reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
            {
                var pending = 0;
                while (true)
                {
                    pending += DrainControl(output, written);
                    if (!reader.TryRead(out var frame))
                    {
                        break;
                    }

                    if (frame.Buffer is null)
                    {
                        continue;
                    }

                    pending += Write(output, frame, written);
                    if (pending >= FlushThreshold)
                    {
                        await FlushAsync(output, cancellationToken).ConfigureAwait(false);
                        pending = 0;
                    }
                }

                pending += DrainControl(output, written);
                if (pending > 0)
                {
                    await FlushAsync(output, cancellationToken).ConfigureAwait(false);
                }
            }

            // Completed: control frames queued just before completion (typically the closing Error) still go out.
            if (DrainControl(output, written) > 0)
            {
                await FlushAsync(output, cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            _completed = true;
            _queue.Writer.TryComplete();
            while (reader.TryRead(out var left))
            {
                left.Return();
            }

            while (_control.TryDequeue(out var left))
            {
                left.Return();
            }
        }
    }

    private int DrainControl(PipeWriter output, Action<OutboundFrame> written)
    {
        var bytes = 0;
        while (_control.TryDequeue(out var frame))
        {
            Interlocked.Decrement(ref _controlCount);
            bytes += Write(output, frame, written);
        }

        return bytes;
    }

    private static int Write(PipeWriter output, OutboundFrame frame, Action<OutboundFrame> written)
    {
        try
        {
            output.Write(frame.Buffer.AsSpan(0, frame.Length));
            written(frame);
            return frame.Length;
        }
        finally
        {
            frame.Return();
        }
    }

    private static async ValueTask FlushAsync(PipeWriter output, CancellationToken cancellationToken)
    {
        var result = await output.FlushAsync(cancellationToken).ConfigureAwait(false);
        if (result.IsCanceled || result.IsCompleted)
        {
            throw new IOException("The link's transport stopped accepting data.");
        }
    }
}

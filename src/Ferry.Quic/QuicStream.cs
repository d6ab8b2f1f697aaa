using System.Buffers;
using Ferry.Quic.Interop;
using Ferry.Quic.Internal;

namespace Ferry.Quic;

/// <summary>Which half of a stream to abort.</summary>
[Flags]
public enum QuicAbortDirection
{
    /// <summary>Stop receiving (sends STOP_SENDING).</summary>
    Read = 1,

    /// <summary>Stop sending (sends RESET_STREAM).</summary>
    Write = 2,

    /// <summary>Both directions.</summary>
    Both = Read | Write,
}

/// <summary>A QUIC stream: ordered bytes with flow control, half-close and reset.</summary>
/// <remarks>
/// WriteAsync copies into a per-stream buffer and waits while more than StreamSendBufferSize bytes are
/// unacknowledged; ReadAsync opens the peer's flow-control window only as the application consumes data.
/// Synchronous Read/Write are not supported because they would block a thread on the network.
/// </remarks>
public sealed class QuicStream : Stream
{
    private readonly QuicConnection _connection;
    private readonly int _sendLimit;
    // Received bytes are appended to pooled chunks of at least 16 KiB rather than one pooled array per packet: a
    // 16 MiB window of 1.4 KB packets outran the shared pool and allocated about as much as it carried.
    private const int ReceiveChunkSize = 16 * 1024;
    private readonly Queue<ReceivedChunk> _received = new();
    private ReceivedChunk? _tail;
    // The holder of the last chunk read to its end, without its buffer: a reader that keeps up allocates nothing per packet.
    private ReceivedChunk? _emptyHolder;
    private int _headConsumed;
    private SendBuffer? _send = new();
    private TaskCompletionSource? _readWaiter;
    private TaskCompletionSource? _writeWaiter;
    private bool _receivedFin;
    private bool _finRequested;
    private bool _finSent;
    private Exception? _readError;
    private Exception? _writeError;
    private bool _readAbortedLocally;
    private bool _closedNatively;
    private bool _disposed;

    internal QuicStream(QuicConnection connection, long id, bool canRead, bool canWrite, int sendLimit)
    {
        _connection = connection;
        Id = id;
        CanRead = canRead;
        CanWrite = canWrite;
        _sendLimit = sendLimit;
    }

    /// <summary>The QUIC stream ID.</summary>
    public long Id { get; }

    /// <summary>True if this side can read (bidirectional, or a unidirectional stream opened by the peer).</summary>
    public override bool CanRead { get; }

    /// <summary>True if this side can write (bidirectional, or a unidirectional stream opened locally).</summary>
    public override bool CanWrite { get; }

    /// <inheritdoc/>
    public override bool CanSeek => false;

    /// <inheritdoc/>
    public override long Length => throw new NotSupportedException();

    /// <inheritdoc/>
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    internal bool InPending { get; set; }

    /// <summary>The send buffer is gone (stream closed or aborted): nothing may be asked of it any more.</summary>
    internal bool IsSendReleasedLocked => _send is null;

    // A waiting writer counts: probing the stream is the only way ngtcp2 0.12 reveals a STOP_SENDING from the peer.
    internal bool HasSomethingToSendLocked => _send is not null && _writeError is null && (_send.Unsent > 0 || (_finRequested && !_finSent) || _writeWaiter is not null);

    /// <inheritdoc/>
    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (!CanRead)
        {
            throw new InvalidOperationException("This stream is send-only.");
        }

        ObjectDisposedException.ThrowIf(_disposed, this);
        // Each pass either completes or waits for a state change; connection teardown wakes every waiter.
        while (true)
        {
            Task wait;
            lock (_connection._lock)
            {
                if (_received.Count > 0)
                {
                    int copied = 0;
                    while (copied < buffer.Length && _received.Count > 0)
                    {
                        var chunk = _received.Peek();
                        int n = Math.Min(chunk.Length - _headConsumed, buffer.Length - copied);
                        chunk.Buffer.AsSpan(_headConsumed, n).CopyTo(buffer.Span[copied..]);
                        copied += n;
                        _headConsumed += n;
                        if (_headConsumed == chunk.Length)
                        {
                            _received.Dequeue();
                            _headConsumed = 0;
                            if (ReferenceEquals(chunk, _tail))
                            {
                                _tail = null;
                            }

                            // Returned, not kept for the next packet: most of a connector's thousands of streams sit idle, and
                            // a chunk each made 16 KiB per flow (the pool hands it back cheaply when data comes).
                            ArrayPool<byte>.Shared.Return(chunk.Buffer);
                            chunk.Buffer = [];
                            chunk.Length = 0;
                            _emptyHolder = chunk;
                        }
                    }

                    _connection.OnConsumedLocked(Id, copied);
                    return copied;
                }

                if (_readError is not null)
                {
                    throw Rethrow(_readError);
                }

                if (_receivedFin)
                {
                    return 0;
                }

                // A zero-byte read waits until data is available without consuming it (the pooled-buffer copy pattern).

                _readWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = _readWaiter.Task;
            }

            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <inheritdoc/>
    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) =>
        WriteAsync(buffer, completeWrites: false, cancellationToken);

    /// <summary>Writes and, if asked, ends the sending side in the same step (FIN rides with the last data).</summary>
    public async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, bool completeWrites, CancellationToken cancellationToken = default)
    {
        if (!CanWrite)
        {
            throw new InvalidOperationException("This stream is receive-only.");
        }

        ObjectDisposedException.ThrowIf(_disposed, this);
        // Each pass either completes or waits for a state change; connection teardown wakes every waiter.
        while (true)
        {
            Task wait;
            lock (_connection._lock)
            {
                if (_writeError is not null)
                {
                    throw Rethrow(_writeError);
                }

                if (_finRequested)
                {
                    throw new InvalidOperationException("Writes were already completed on this stream.");
                }

                long space = _sendLimit - _send!.Buffered;
                if (space > 0 || buffer.IsEmpty)
                {
                    int n = (int)Math.Min(space, buffer.Length);
                    _send.Append(buffer.Span[..n]);
                    buffer = buffer[n..];
                    if (buffer.IsEmpty)
                    {
                        _finRequested = completeWrites;
                        _connection.AfterStreamWriteLocked(this);
                        return;
                    }

                    _connection.AfterStreamWriteLocked(this);
                    continue;
                }

                _writeWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = _writeWaiter.Task;
                _connection.RecheckLaterLocked(this);
            }

            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Ends the sending side gracefully: the peer reads to the end and then gets 0.</summary>
    public void CompleteWrites()
    {
        if (!CanWrite)
        {
            return;
        }

        lock (_connection._lock)
        {
            if (_finRequested || _writeError is not null)
            {
                return;
            }

            _finRequested = true;
            _connection.AfterStreamWriteLocked(this);
        }
    }

    /// <summary>Aborts one or both directions with an application error code the peer will see.</summary>
    public void Abort(QuicAbortDirection direction, long errorCode)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(errorCode);
        lock (_connection._lock)
        {
            bool read = direction.HasFlag(QuicAbortDirection.Read) && CanRead && !_readAbortedLocally && !_closedNatively;
            bool write = direction.HasFlag(QuicAbortDirection.Write) && CanWrite && _writeError is null && !_closedNatively;
            if (read)
            {
                _readAbortedLocally = true;
                _readError ??= new QuicException(QuicError.OperationAborted, $"Reading was aborted locally with error code {errorCode}.", errorCode);
                DrainReceivedLocked();
                Wake(ref _readWaiter);
            }

            if (write)
            {
                _writeError = new QuicException(QuicError.OperationAborted, $"Writing was aborted locally with error code {errorCode}.", errorCode);
                _send?.DropUnsent();
                Wake(ref _writeWaiter);
            }

            if (read || write)
            {
                _connection.ShutdownStreamLocked(Id, read, write, errorCode);
            }
        }
    }

    /// <inheritdoc/>
    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <inheritdoc/>
    public override void Flush()
    {
    }

    /// <inheritdoc/>
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("Use ReadAsync: QuicStream never blocks a thread.");

    /// <inheritdoc/>
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("Use WriteAsync: QuicStream never blocks a thread.");

    /// <inheritdoc/>
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <inheritdoc/>
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <inheritdoc/>
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    /// <inheritdoc/>
    public override void SetLength(long value) => throw new NotSupportedException();

    /// <summary>Completes writes (FIN) if still open and stops reading if the peer has not finished.</summary>
    public override ValueTask DisposeAsync()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
        return ValueTask.CompletedTask;
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (!disposing || _disposed)
        {
            return;
        }

        _disposed = true;
        lock (_connection._lock)
        {
            if (CanWrite && !_finRequested && _writeError is null && !_closedNatively)
            {
                _finRequested = true;
                _connection.AfterStreamWriteLocked(this);
            }

            if (CanRead && !_receivedFin && _readError is null && !_closedNatively)
            {
                _readAbortedLocally = true;
                _readError = new ObjectDisposedException(nameof(QuicStream));
                _connection.ShutdownStreamLocked(Id, read: true, write: false, 0);
            }

            DrainReceivedLocked();
        }

        base.Dispose(disposing);
    }

    internal int GetUnsentLocked(Span<ngtcp2_vec> vecs, out long total, out bool fin)
    {
        int count = _send!.GetUnsent(vecs, out total);
        fin = _finRequested && !_finSent && total == _send.Unsent;
        return count;
    }

    internal void OnSentLocked(long bytes, bool finWritten)
    {
        _send?.MarkSent(bytes);
        if (finWritten)
        {
            _finSent = true;
        }
    }

    internal void OnReceiveLocked(ReadOnlySpan<byte> data, bool fin)
    {
        if (!data.IsEmpty)
        {
            if (_readAbortedLocally)
            {
                // Nobody will read it; still give the credit back so the connection window does not shrink.
                _connection.OnConsumedLocked(Id, data.Length);
            }
            else
            {
                if (_tail is { } tail)
                {
                    int n = Math.Min(data.Length, tail.Buffer.Length - tail.Length);
                    data[..n].CopyTo(tail.Buffer.AsSpan(tail.Length));
                    tail.Length += n;
                    data = data[n..];
                }

                if (!data.IsEmpty)
                {
                    var chunk = _emptyHolder ?? new ReceivedChunk();
                    _emptyHolder = null;
                    chunk.Buffer = ArrayPool<byte>.Shared.Rent(Math.Max(ReceiveChunkSize, data.Length));
                    data.CopyTo(chunk.Buffer);
                    chunk.Length = data.Length;
                    _received.Enqueue(chunk);
                    _tail = chunk;
                }
            }
        }

        _receivedFin |= fin;
        Wake(ref _readWaiter);
    }

    internal void OnAckedLocked(long upTo)
    {
        _send?.Acknowledge(upTo);
        if (_send is not null && _send.Buffered < _sendLimit)
        {
            Wake(ref _writeWaiter);
        }
    }

    internal void OnPeerResetLocked(long errorCode)
    {
        _readError ??= new QuicException(QuicError.StreamAborted, $"The peer reset the stream with error code {errorCode}.", errorCode);
        Wake(ref _readWaiter);
    }

    /// <summary>ngtcp2 refused to send: after our own abort that is expected, otherwise the peer sent STOP_SENDING.</summary>
    internal void OnWriteShutLocked()
    {
        // ngtcp2 0.12 has no callback for a received STOP_SENDING, so its error code is not known here.
        _writeError ??= new QuicException(QuicError.StreamAborted, "The peer stopped reading the stream (STOP_SENDING).");
        _send?.DropUnsent();
        Wake(ref _writeWaiter);
    }

    internal void OnClosedLocked(long? errorCode)
    {
        _closedNatively = true;
        if (CanRead && !_receivedFin)
        {
            _readError ??= new QuicException(QuicError.StreamAborted, $"The stream was closed with error code {errorCode ?? 0}.", errorCode);
        }

        if (CanWrite && !_finSent)
        {
            _writeError ??= new QuicException(QuicError.StreamAborted, $"The stream was closed with error code {errorCode ?? 0}.", errorCode);
        }

        // ngtcp2 forgets the stream now, so nothing points into the send buffer any more.
        ReleaseNativeLocked();
        Wake(ref _readWaiter);
        Wake(ref _writeWaiter);
    }

    internal void OnConnectionTerminatedLocked()
    {
        var e = _connection.TerminalException();
        if (!_receivedFin)
        {
            _readError ??= e;
        }

        if (!_finSent)
        {
            _writeError ??= e;
        }

        Wake(ref _readWaiter);
        Wake(ref _writeWaiter);
    }

    /// <summary>Only after ngtcp2 stopped referencing the bytes (stream closed or connection deleted).</summary>
    internal void ReleaseNativeLocked()
    {
        _send?.Dispose();
        _send = null;
        _writeError ??= new QuicException(QuicError.OperationAborted, "The stream is closed.");
    }

    private void DrainReceivedLocked()
    {
        int total = -_headConsumed;
        _headConsumed = 0;
        while (_received.TryDequeue(out var item))
        {
            total += item.Length;
            ArrayPool<byte>.Shared.Return(item.Buffer);
        }

        _tail = null;

        _connection.OnConsumedLocked(Id, total);
    }

    private static void Wake(ref TaskCompletionSource? waiter)
    {
        var w = waiter;
        waiter = null;
        w?.TrySetResult();
    }

    private static Exception Rethrow(Exception e) => e switch
    {
        QuicException q => new QuicException(q.Error, q.Message, q.ApplicationErrorCode, q.TransportErrorCode, q),
        ObjectDisposedException => new ObjectDisposedException(nameof(QuicStream)),
        _ => e,
    };

    /// <summary>A pooled buffer of received bytes; the last one in the queue keeps filling.</summary>
    private sealed class ReceivedChunk
    {
        public byte[] Buffer { get; set; } = [];

        public int Length { get; set; }
    }
}

using System.Buffers;
using System.Net.Sockets;

namespace Ferry.Client.Access;

/// <summary>
/// Bytes an application sends while its flow is still being opened. They follow the flow header at once instead of waiting a round
/// trip for the connector's reply, and are sent again after a new header when the flow moves on to another connector.
/// </summary>
/// <remarks>
/// The connector reads exactly the header, checks access and connects before it reads anything after it, so bytes sent early reach
/// the destination only if the flow is allowed. At most <see cref="Capacity"/> bytes are kept (to replay them); beyond that the
/// application waits for the reply, as it did before. Once the flow is open, <see cref="Application"/> is the application's side of
/// the copy: it returns what was read but not yet sent, then reads the application directly.
/// </remarks>
public sealed class EarlyApplicationData : IAsyncDisposable
{
    /// <summary>Bytes kept for replay; a request, a TLS ClientHello or an SSH banner fits.</summary>
    public const int Capacity = 16 * 1024;

    private readonly NetworkStream _application;
    private readonly CancellationTokenSource _stop = new();
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly Task _reading;
    private byte[]? _buffer;
    private int _length;
    private int _sent;
    private Stream? _target;
    private bool _opened;
    private bool _ended;
    private Exception? _failure;

    /// <summary>Starts reading <paramref name="application"/> in the background; the caller keeps owning the stream.</summary>
    public EarlyApplicationData(NetworkStream application)
    {
        ArgumentNullException.ThrowIfNull(application);
        _application = application;
        Application = new ApplicationSide(this);
        _reading = Task.Run(ReadAsync);
    }

    /// <summary>The application's side of the opened flow: early bytes not yet sent first, then the application's own.</summary>
    public Stream Application { get; }

    /// <summary>Bytes the opened flow carried before <see cref="Application"/> took over (they are not in the copy's count).</summary>
    public long SentEarly { get; private set; }

    /// <summary>Ends the application's sending side once the flow's far end has finished (shuts the socket down for sending).</summary>
    public ValueTask ShutdownApplicationSend(Stream _) => Core.Flows.FlowCopier.ShutdownSocketSend(_application);

    /// <summary>Sends everything read so far after a freshly written header, then each new read as it comes, until detached.</summary>
    public async Task AttachAsync(Stream flow, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(flow);
        await _gate.WaitAsync(cancellationToken);
        try
        {
            _target = flow;
            _sent = 0;
            if (_length > 0 && _buffer is not null)
            {
                await flow.WriteAsync(_buffer.AsMemory(0, _length), cancellationToken);
                _sent = _length;
            }
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>Stops sending to the flow attached; when <paramref name="opened"/>, that flow carries the rest and reading early stops.</summary>
    public async Task DetachAsync(bool opened)
    {
        await _gate.WaitAsync();
        try
        {
            _target = null;
            _opened = opened;
            if (opened)
            {
                SentEarly = _sent;
            }
        }
        finally
        {
            _gate.Release();
        }
    }

    private async Task ReadAsync()
    {
        try
        {
            while (_length < Capacity && !_opened)
            {
                // Wait without a buffer: a flow whose application says nothing before the reply (server speaks first) holds none.
                _ = await _application.ReadAsync(Memory<byte>.Empty, _stop.Token);
                if (_opened)
                {
                    return;
                }
                _buffer ??= ArrayPool<byte>.Shared.Rent(Capacity);
                var n = await _application.ReadAsync(_buffer.AsMemory(_length, Capacity - _length), _stop.Token);
                await _gate.WaitAsync(_stop.Token);
                try
                {
                    if (n == 0)
                    {
                        _ended = true;
                        return;
                    }
                    _length += n;
                    if (_target is { } flow)
                    {
                        try
                        {
                            await flow.WriteAsync(_buffer.AsMemory(_sent, _length - _sent), _stop.Token);
                            _sent = _length;
                        }
                        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
                        {
                            // That connector's stream failed; the opener finds out from its reply and replays everything on the next one.
                            _target = null;
                        }
                    }
                    if (_opened)
                    {
                        return;
                    }
                }
                finally
                {
                    _gate.Release();
                }
            }
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested)
        {
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            _failure = e;
            _ended = true;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        await _reading.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        ReturnBuffer();
        _stop.Dispose();
        _gate.Dispose();
    }

    private void ReturnBuffer()
    {
        if (Interlocked.Exchange(ref _buffer, null) is { } buffer)
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Reads hand over from the early reader (which stops after its read in flight) to the application; writes go straight through.</summary>
    private sealed class ApplicationSide(EarlyApplicationData early) : Stream
    {
        private bool _handedOver;

        public override bool CanRead => true;

        public override bool CanWrite => true;

        public override bool CanSeek => false;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            if (!_handedOver)
            {
                // The early reader returns once its read in flight completes: it was told the flow is open before this copy began.
                await early._reading.WaitAsync(cancellationToken);
                _handedOver = true;
            }
            if (early._buffer is { } kept)
            {
                if (early._sent < early._length)
                {
                    var n = Math.Min(buffer.Length, early._length - early._sent);
                    kept.AsMemory(early._sent, n).CopyTo(buffer);
                    early._sent += n;
                    return n;
                }
                early.ReturnBuffer();
            }
            if (early._failure is { } failure)
            {
                throw new IOException(failure.Message, failure);
            }
            return early._ended ? 0 : await early._application.ReadAsync(buffer, cancellationToken);
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
            => early._application.WriteAsync(buffer, cancellationToken);

        public override Task FlushAsync(CancellationToken cancellationToken) => early._application.FlushAsync(cancellationToken);

        public override void Flush() => early._application.Flush();

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("reads are asynchronous");

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("writes are asynchronous");

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
            => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
            => WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();
    }
}

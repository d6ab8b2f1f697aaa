using System.IO.Pipelines;

namespace Ferry.UnitTests.Flows;

/// <summary>An in-memory stand-in for a QUIC stream pair: two pipes, one per direction, with half-close and abort.</summary>
internal static class DuplexStreams
{
    /// <summary>Two connected ends; what one writes the other reads.</summary>
    public static (DuplexStream A, DuplexStream B) CreatePair()
    {
        var aToB = new Pipe();
        var bToA = new Pipe();
        return (new DuplexStream(bToA.Reader, aToB.Writer), new DuplexStream(aToB.Reader, bToA.Writer));
    }

    /// <summary>The completeWrites callback for a <see cref="DuplexStream"/>: the peer reads its end (a QUIC FIN).</summary>
    public static ValueTask CompleteWrites(Stream stream)
    {
        ((DuplexStream)stream).CompleteWrites();
        return ValueTask.CompletedTask;
    }
}

/// <summary>One end of an in-memory duplex: disposing it without completing writes aborts (the peer's reads fail, like a QUIC reset).</summary>
internal sealed class DuplexStream(PipeReader reader, PipeWriter writer) : Stream
{
    private readonly Stream _reader = reader.AsStream();
    private readonly Stream _writer = writer.AsStream();
    private int _writesCompleted;
    private int _disposed;

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public void CompleteWrites()
    {
        if (Interlocked.Exchange(ref _writesCompleted, 1) == 0)
        {
            writer.Complete();
        }
    }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        => _reader.ReadAsync(buffer, cancellationToken);

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        => _reader.ReadAsync(buffer, offset, count, cancellationToken);

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (Volatile.Read(ref _writesCompleted) != 0)
        {
            throw new InvalidOperationException("writes were completed on this stream");
        }
        return _writer.WriteAsync(buffer, cancellationToken);
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        => WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override Task FlushAsync(CancellationToken cancellationToken) => _writer.FlushAsync(cancellationToken);

    public override void Flush() => throw new NotSupportedException("synchronous I/O: use the async methods");

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("synchronous I/O: use the async methods");

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("synchronous I/O: use the async methods");

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing && Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            if (Interlocked.Exchange(ref _writesCompleted, 1) == 0)
            {
                writer.Complete(new IOException("the stream was aborted"));
            }
            reader.Complete();
        }
        base.Dispose(disposing);
    }

    public override ValueTask DisposeAsync()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
        return ValueTask.CompletedTask;
    }
}
